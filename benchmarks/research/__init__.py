"""One-off experiments behind the method's design (docs/nhle.md): ``python -m benchmarks.research.<name>``."""
