"""Configuration: router.yaml + registry.yaml read (``yaml12``), checked (``problems``,
``registry`` with the schema gate) and compiled (``load``) into one frozen ``Snapshot``, the
value every plane reads. ``Live`` holds the snapshot in force; only the control plane's
reloader assigns it."""

from .load import (
                   BUCKETS,
                   Admin,
                   BlueGreen,
                   Checks,
                   Drift,
                   Limits,
                   Listen,
                   Live,
                   Outlier,
                   Override,
                   PredictionLogSettings,
                   Rollout,
                   Route,
                   Shadow,
                   Snapshot,
                   Sticky,
                   Version,
                   load_snapshot,
                   loopback,
                   revision_of,
)

__all__ = ["BUCKETS", "Admin", "BlueGreen", "Checks", "Drift", "Limits", "Listen", "Live",
           "Outlier", "Override", "PredictionLogSettings", "Rollout", "Route", "Shadow",
           "Snapshot", "Sticky", "Version", "load_snapshot", "loopback", "revision_of"]
