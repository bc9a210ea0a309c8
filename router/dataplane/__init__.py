"""The data plane: every request's path through the router (docs/architecture.md).

``server`` (HTTP/1.1 front end; ``http`` holds its request, answer and error values) hands
each request to ``proxy`` (the handler): ``checks`` vets the path, ids and answer ids,
``routing`` (pure) decides, ``client`` with ``connection`` forwards over pooled upstream
connections (``upstream``: header rules, replica choice, error translation; ``timers``: coarse
deadlines), and the finished exchange goes to the observers given at start-up. Imports nothing
from the observers, the control plane, the process or analysis.
"""
