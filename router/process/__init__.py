"""The process: wiring and lifecycle of one router (``app``) or of a supervisor with N
workers (``workers``); ``runtime`` starts the event loop."""
