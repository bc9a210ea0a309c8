"""A router.yaml read as plain YAML, not compiled: what the offline commands need of it.

``audit``, ``history``, ``report``, ``baseline`` and ``rollout`` run beside (or long after) the
router, often without its environment variables: they read only the few keys they need, with
the same defaults as ``load_snapshot`` (the fields of ``snapshot``), and never validate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import yaml12
from .problems import Problems
from .registry import Registry, parse_registry
from .snapshot import LOG_DIR, STATE_DIR, Admin


def raw_config(config: str | Path) -> dict[str, Any]:
    """The router.yaml at ``config`` as plain YAML (no validation, no env); {} when absent."""
    path = Path(config)
    doc = yaml12.loads(path.read_bytes()) if path.exists() else {}
    return doc if isinstance(doc, dict) else {}


def config_paths(config: str | Path) -> tuple[Path, Path]:
    """state_dir and prediction_log.dir named by a router.yaml, read without compiling it."""
    path = Path(config)
    doc = raw_config(config)
    state = path.parent / str(doc.get("state_dir", STATE_DIR))
    predlog = doc.get("prediction_log") if isinstance(doc.get("prediction_log"), dict) else {}
    logs = path.parent / str(predlog.get("dir", LOG_DIR))  # type: ignore[union-attr]
    return state, logs


def admin_of(config: str | Path) -> tuple[str, str | None]:
    """The admin API's base URL and the name of its token's environment variable."""
    admin = raw_config(config).get("admin") or {}
    defaults = Admin()
    base = f"http://{admin.get('host', defaults.host)}:{admin.get('port', defaults.port)}"
    return base, admin.get("token_env")


def fleet_of(config: str | Path) -> tuple[str, str] | None:
    """(store URL, fleet name) of a router.yaml's ``fleet:`` block (``${ENV}`` expanded from
    this process's environment), or None without one."""
    fleet = raw_config(config).get("fleet")
    if not isinstance(fleet, dict) or "store" not in fleet or "name" not in fleet:
        return None
    return os.path.expandvars(str(fleet["store"])), str(fleet["name"])


def ship_of(config: str | Path) -> tuple[str, dict[str, Any]] | None:
    """(store URL, storage_options) of a router.yaml's ``prediction_log.ship`` block, or None
    without one. ``${ENV}`` is expanded from this process's environment (an unset variable
    stays as written) and a relative ``file://`` store is relative to router.yaml, as
    ``load_snapshot`` reads them."""
    predlog = raw_config(config).get("prediction_log")
    ship = predlog.get("ship") if isinstance(predlog, dict) else None
    if not isinstance(ship, dict) or not isinstance(ship.get("to"), str):
        return None
    to = os.path.expandvars(ship["to"])
    if to.startswith("file://") and not to.startswith("file:///"):
        to = "file://" + str((Path(config).parent / to[len("file://"):]).resolve())
    options = ship.get("storage_options")
    return to.rstrip("/"), _expand(options) if isinstance(options, dict) else {}


def _expand(value: Any) -> Any:
    """``value`` with ``${ENV}`` expanded in every string, at any depth."""
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def registry_of(config: str | Path) -> tuple[Registry | None, list[str]]:
    """The registry named by a router.yaml, parsed on its own (no routes, no env needed)."""
    path = Path(config)
    name = raw_config(config).get("registry", "registry.yaml")
    reg_path = path.parent / str(name)
    problems = Problems(reg_path.name)
    if not reg_path.exists():
        return None, [f"{reg_path}: not found"]
    registry = parse_registry(problems, yaml12.loads(reg_path.read_bytes()), reg_path.parent)
    return registry, problems.errors
