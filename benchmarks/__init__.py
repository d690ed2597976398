"""stepguard benchmarks: `./dev bench` (= `python -m benchmarks`).

Every figure is measured against baselines started in the same run, and
reported as a ratio, so the numbers mean something on any machine.
"""
