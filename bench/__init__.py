"""Benchmarks, run from the repository root: `python -m bench.<name>` (each module says what it measures)."""
