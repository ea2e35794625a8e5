"""The load benchmark's own parts (benchmarks/load_http.py is the command line that runs them).

Imported by that script as `loadlib` (its directory is the first entry of sys.path when it runs).
What the reliability tests share with the benchmark - the load generator, the CPU accounting, the
figures of a cell, the service launcher - is in the installed package: `antifraud.engine.loadgen` and
`antifraud.engine.stack`.

- `snapshot`: Redis loaded with the sample before the replay window, cached as an RDB file;
- `runs`: the matrix of cells (worker counts x rates x repeats) and the generator's self-test;
- `report`: the Markdown tables, the machine's description, the JSON results file;
- `profiling`: py-spy profiles of the workers under load, summarised;
- `components`: each step of a request timed in-process.
"""
