"""The data plane: every request's path through the router (docs/architecture.md).

``server`` (HTTP/1.1 front end) hands each request to ``proxy`` (the handler), which matches
and decides with ``routing`` (pure), forwards with ``client`` (pooled upstream connections;
``upstream`` holds header rules, replica choice and error translation; ``timers`` the
coarse deadlines) and hands the finished exchange to the observers it was given at start-up.
Imports nothing from the observers, the control plane, the process or analysis.
"""
