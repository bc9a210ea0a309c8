"""``model-router rollout``: a client of a running router's admin API.

``status`` reads ``GET /-/rollouts``; ``pause``, ``resume``, ``promote`` and ``abort`` POST to
``/-/rollouts/<route>/<action>`` (with the bearer token from ``admin.token_env`` when set). The
router answers; this module only asks and prints: a line per rollout (``describe_rollout``),
or with ``--json`` the admin API's JSON as it came. Exit codes as the CLI's: 0 ok, 1 the API
refused, could not be reached, or the route has no rollout, 2 usage.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from ..config.raw import admin_of
from ..console import print_json

ACTIONS = ("status", "pause", "resume", "promote", "abort")


def rollout_command(config: str, action: str, route: str | None, admin: str | None = None,
                    as_json: bool = False) -> int:
    """Run ``action`` (one of ``ACTIONS``) against the admin API named by ``config`` (or at
    base URL ``admin``) and print the answer."""
    base, token_env = admin_of(config)
    base = admin or base
    headers = {}
    if token_env and os.environ.get(token_env):
        headers["Authorization"] = f"Bearer {os.environ[token_env]}"
    if action == "status":
        request = urllib.request.Request(f"{base}/-/rollouts", headers=headers)
    else:
        if not route:
            print(f"rollout {action} needs a ROUTE", file=sys.stderr)
            return 2
        # JSON, as the admin API requires of every POST (a browser's form cannot send it).
        request = urllib.request.Request(f"{base}/-/rollouts/{route}/{action}",
                                         data=b"{}", method="POST",
                                         headers={**headers,
                                                  "Content-Type": "application/json"})
    missing = token_env if token_env and not os.environ.get(token_env) else None
    body = _ask(request, base, missing, as_json)
    if body is None:
        return 1
    if action != "status":  # the API answers with the rollout as it now stands
        rows = [body]
    else:
        rows = [r for r in body if not route or r["route"] == route]
        if route and not rows:
            print(f"no rollout on route {route}", file=sys.stderr)
            return 1
    if as_json:
        print_json(body if action != "status" else rows)
        return 0
    if not rows:
        print("no rollouts")
    for r in rows:
        print(describe_rollout(r))
    return 0


def _ask(request: urllib.request.Request, base: str, token_env: str | None = None,
         as_json: bool = False) -> Any:
    """The admin API's JSON answer; None (said on stderr) when it refused or is unreachable.
    ``token_env``: the token's variable, named in the answer to a 401 (it is not set);
    ``as_json``: the refusal is said as JSON too (``{"status", "error", "code"}``)."""
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:  # the API's errors are {"error": ..., "code": ...}: say the sentence
            text = orjson.loads(text)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        if exc.code == 401 and token_env:
            text += f" (set {token_env} to the admin token; it is not set here)"
        if as_json:
            code = {401: "unauthorized", 404: "not_found", 409: "conflict"}.get(exc.code)
            print(orjson.dumps({"status": exc.code, "error": text, "code": code}).decode(),
                  file=sys.stderr)
        else:
            print(f"{exc.code}: {text}", file=sys.stderr)
    except OSError as exc:
        if as_json:
            print(orjson.dumps({"status": None, "error": f"cannot reach the admin API at "
                                f"{base}: {exc}", "code": "unreachable"}).decode(),
                  file=sys.stderr)
        else:
            print(f"cannot reach the admin API at {base}: {exc}", file=sys.stderr)
    return None


def fleet_command(config: str, admin: str | None = None, as_json: bool = False) -> int:
    """``model-router fleet status``: ``GET /-/fleet`` of the replica at ``admin`` (or the
    config's admin port) and print it."""
    base = admin or admin_of(config)[0]
    body = _ask(urllib.request.Request(f"{base}/-/fleet"), base, as_json=as_json)
    if body is None:
        return 1
    if as_json:
        print_json(body)
        return 0
    print(f"fleet {body['name']}: leader {body['leader'] or '(none)'}; store {body['store']}; "
          f"prometheus {body['prometheus']} (asked {body['replica']})")
    for r in body["replicas"]:
        steps = ", ".join(f"{route} {step + 1 if step is not None else '-'}"
                          f"@gen{r.get('generations', {}).get(route)}"
                          for route, step in r["rollouts"].items()) or "no rollouts"
        mark = "*" if r["replica"] == body["leader"] else " "
        gone = "" if r.get("live", True) else " (silent for over lease_s: gone?)"
        print(f" {mark} {r['replica']}: revision {r['revision']}, {steps}, "
              f"last seen {r['last_seen']}{gone}")
    return 0


def describe_rollout(r: Mapping[str, Any]) -> str:
    """One line for a rollout of ``/-/rollouts`` (or a command's answer): where it stands and
    its evidence. A state without its route's block (the block went meanwhile) has no
    versions, steps or evidence: the line leaves them out."""
    why = f" because {r['reason']}" if r.get("reason") else ""
    steps = f" (step {r['step'] + 1}/{len(r['steps'])})" if r.get("steps") else ""
    ev = r.get("evidence") or {}
    arms = "".join(f"; {arm} {ev[arm]['requests']} requests, {ev[arm]['errors']} errors"
                   for arm in ("canary", "baseline") if arm in ev)
    return (f"{r['route']}: {r.get('baseline', '?')} -> {r.get('canary', '?')} "
            f"{r['status']}{why} at {r['weight']:g}%{steps}{arms}")
