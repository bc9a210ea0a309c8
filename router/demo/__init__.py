"""``model-router demo``: demo model servers (``models``), the router and simulated users
(``run``)."""
