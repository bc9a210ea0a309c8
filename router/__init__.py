"""model-router: a traffic router in front of ML model servers.

How the pieces fit (one module per concern):

- ``config``: read router.yaml + registry.yaml (``yaml12``, ``problems``, ``registry``) and
  compile them into a frozen ``Snapshot``; every error names file, path and reason.
- ``routing``: the pure decision (pinned path > override > blue/green > sticky/weighted split).
- ``proxy``: the aiohttp low-level handler, the hot path; ``upstream`` holds its header rules,
  replica choice and error translation. Finished exchanges go to observers.
- ``reload``: watch files, SIGHUP and the admin API; build, validate, swap one reference;
  ``history`` records every applied or rejected config and keeps applied revisions.
- ``app`` wires it all and owns the lifecycle; ``admin`` serves health, config and
  ``metrics``; ``cli`` is the thin ``model-router`` command.
"""

__version__ = "0.1.0"
