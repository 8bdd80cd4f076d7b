"""The streaming benchmark: token lag, latency and cost under many concurrent conversations.

`python -m bench --help` tells how to run it; docs/benchmarks.md has the latest numbers.
"""
