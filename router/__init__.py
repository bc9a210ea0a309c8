"""model-router: a traffic router in front of ML model servers.

How the pieces fit (one module per concern):

- ``config``: read router.yaml + registry.yaml (``yaml12``, ``problems``, ``registry`` with
  the schema gate) and compile them into a frozen ``Snapshot`` (validators from
  ``validation``); every error names file, path and reason.
- ``routing``: the pure decision (pinned path > override > blue/green > sticky/weighted split).
- ``server`` is the HTTP/1.1 front end (asyncio protocol + httptools); ``proxy`` is its
  handler, the hot path; ``client`` is the lean httptools upstream client, ``upstream``
  holds header rules, replica choice and error translation; ``timers`` gives the per-request
  timeouts shared slots instead of a loop timer each.
  Finished exchanges go to the prediction log (``predlog``), ``shadow`` copies, ``drift``
  sampling, ``metrics`` and the rollout evidence.
- ``reload``: watch files, SIGHUP and the admin API; build, validate, gate, swap one
  reference; ``history`` records every applied or rejected config and keeps revisions;
  ``rollout`` judges canaries and owns their weights.
- ``app`` wires one process and owns its lifecycle (``workers`` runs N of them behind a
  supervisor); ``admin`` serves health, config, rollouts and metrics; ``cli`` is the thin
  ``model-router`` command over ``audit``, ``report``, ``baseline`` and ``demo``.
"""

__version__ = "0.1.0"
