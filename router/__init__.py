"""model-router: a traffic router in front of ML model servers.

Three planes, imports pointing one way (docs/architecture.md maps every module):

- ``dataplane``: the HTTP server, the proxy handler, pure routing, the upstream client;
- ``observers``: prediction log, shadows, drift: after the answer, one guarded dispatch;
- ``control``: reload (the one writer of the live snapshot), rollouts, history, admin API;
- ``process``: wiring and lifecycle (``app``, ``workers``); ``analysis``: the offline tools;
- shared leaves: ``config`` (the frozen ``Snapshot``), ``records``, ``bodies``,
  ``validation``, ``metrics``, ``errors``, ``timefmt``, ``stats``.

``cli`` parses the command line and dispatches; ``demo`` runs the product on one machine.
"""

__version__ = "0.1.0"
