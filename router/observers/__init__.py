"""Observers: what happens after an answer, never on its way (docs/architecture.md).

Each takes finished exchanges from the proxy through one guarded dispatch: ``predlog`` (the
prediction log), ``shadow`` (mirrored copies and their comparison), ``drift`` (PSI against
baselines); rollout evidence lives with its controller. A failure is logged and counted in
``observer_errors_total{observer}`` (failures inside a shadow copy's own task are logged
there), never the request's.
"""
