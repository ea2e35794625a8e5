"""`make reliability`: faults under load, durability, idempotency at scale, fuzzing; prints figures."""
