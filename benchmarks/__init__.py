"""Benchmarks that print JSON: one module per benchmark, one shared harness (``harness.py``).

    python -m jobs.bench NAME [options]     # NAME: annotate, tools, ray, train, eval, scale
"""
