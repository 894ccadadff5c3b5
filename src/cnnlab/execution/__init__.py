"""Training a list of runs: one entry point (`execute`) over sibling backends (worker
processes, threads with CUDA streams, Ray tasks) that share `planning` and `transport`."""
