"""Configuration: router.yaml + registry.yaml read (``yaml12``), checked (``problems``,
``registry`` with the schema gate) and compiled (``load``: files and top-level sections;
``routes``, ``versions``, ``weights``: the routes) into one frozen ``Snapshot`` (``snapshot``:
the types, their defaults and the bucket bounds), the value every plane reads. ``Live`` holds
the snapshot in force; only the control plane's reloader assigns it."""

from .load import load_snapshot, loopback, revision_of
from .snapshot import (
    BUCKETS,
    Admin,
    BlueGreen,
    Checks,
    Drift,
    Fleet,
    GrpcTls,
    Limits,
    Listen,
    Live,
    Outlier,
    Override,
    PredictionLogSettings,
    Rollout,
    Route,
    Shadow,
    Ship,
    Snapshot,
    Sticky,
    Version,
    bucket_bounds,
)

__all__ = ["BUCKETS", "Admin", "BlueGreen", "Checks", "Drift", "Fleet", "GrpcTls", "Limits", "Listen", "Live",
           "Outlier", "Override", "PredictionLogSettings", "Rollout", "Route", "Shadow", "Ship",
           "Snapshot", "Sticky", "Version", "bucket_bounds", "load_snapshot", "loopback",
           "revision_of"]
