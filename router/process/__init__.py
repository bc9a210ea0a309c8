"""The process: wiring and lifecycle of one router (``app``) or of a supervisor with N
workers (``workers``), on the shared ``lifecycle`` (start in order, stop in reverse, owned
tasks); ``main`` is ``serve``, ``runtime`` starts the event loop."""
