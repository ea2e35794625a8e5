"""The review queue: decisions answered `review` wait in Redis for a person to claim and resolve them
(`queue.ReviewQueue`), fed by the decision sink's after-write hook (`feed.ConsoleFeed`)."""
