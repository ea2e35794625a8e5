"""An open-loop, fixed-rate HTTP load generator for the scoring service, and what measures it.

Shared by the load benchmark (benchmarks/load_http.py) and the reliability tests (tests/reliability):

- `replay`: the sample's last days as payment bodies, and `RequestSource`, an endless stream of unique,
  time-ordered `POST /v1/score` requests built from them;
- `client`: `run_cell` sends raw HTTP/1.1 requests at a fixed rate (request i is due at t0 + i/rate
  whatever happened before) on keep-alive connections and records when each was due, sent, answered;
- `cpu`: CPU time of processes and of the whole machine, from /proc (Linux);
- `stats`: a cell's figures (`summarize` -> `CellResult`) and the saturation criterion;
- `nullserver`: a server answering at once, to measure the generator alone.

The service itself is started by `antifraud.engine.stack.ServiceStack`.
"""
