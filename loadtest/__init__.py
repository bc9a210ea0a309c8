"""Benchmarks for model-router (outside pytest collection): `python -m loadtest`."""
