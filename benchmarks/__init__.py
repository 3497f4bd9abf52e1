"""Benchmark scripts and their shared harness (run from the repository root: ``python -m benchmarks.<name>``)."""
