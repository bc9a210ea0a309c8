"""Offline analysis, never imported by a serving process: ``audit`` (records by request and
filter, DuckDB, over the local log and ``shipped``, the fleet's log in object storage),
``report`` (per-version statistics, SciPy), ``baseline`` (drift baselines
from training data or the log), ``views`` (what the CLI prints of them)."""
