"""Benchmarks of the speech function against the local stand-ins (`make bench`).

`run` starts the stand-ins and one worker process per measurement; each worker imports the real
`function_app` with the stack's settings in its environment from the start, as the Functions host
does, and calls the HTTP function directly (no HTTP host in between). Results go to
`benchmarks/results.json`, `benchmarks/RESULTS.md` and the PNG plots beside them.
"""
