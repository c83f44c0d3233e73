"""Benchmarks: netstack against slirp4netns, pasta and a rootful veth pair, on one
machine in one run (`bench/run`), plus pytest-benchmark micro-benchmarks
(bench/bench_micro.py)."""
