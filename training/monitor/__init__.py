"""`antifraud monitor`: the model's reference profile (`reference`), the period's decisions
(`decisions`), live performance (`performance`), the challenger (`challenger`), the report and its
outputs (`report`, `output`). The arithmetic both the service and these tools need is in
`antifraud.engine.monitoring`; docs/monitoring.md explains every figure."""
