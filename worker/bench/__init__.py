"""Worker benchmarks: `python -m worker.bench.latency` (job overhead) and
`python -m worker.bench.cancel` (cancel latency).
"""
