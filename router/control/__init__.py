"""The control plane: what changes the router while it serves (docs/architecture.md).

``reload`` (the only writer of the live snapshot), ``rollout`` (progressive rollouts and
their evidence), ``history`` (deployment history and revisions), ``admin`` (the admin API)
and ``client`` (the CLI's client of that API).
"""
