"""Readers of request and answer bodies, shared by every plane: feature columns of a request,
output columns of an answer, a sticky key from a JSON body, how a categorical value is keyed.

Every walk has its own stack and a depth bound (``MAX_NESTING``): hostile nesting is skipped,
never a RecursionError on a request's path or in a background task.
"""

from __future__ import annotations

from typing import Any

MAX_NESTING = 64           # values nested deeper are not features: skipped


def category(value: Any) -> str:
    """How a categorical value is keyed in a baseline (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def input_columns(doc: Any, protocol: str) -> dict[str, list[Any]]:
    """Feature name -> values of one request body (v2 named inputs, json rows/columns).

    A feature whose values nest over MAX_NESTING deep is left out (never raised).
    """
    out: dict[str, list[Any]] = {}
    if not isinstance(doc, dict):
        rows = doc if isinstance(doc, list) else []
    elif protocol == "v2":
        for tensor in doc.get("inputs") or []:
            if isinstance(tensor, dict) and isinstance(tensor.get("name"), str):
                values = flat(tensor.get("data"))
                if values is not None:
                    out[tensor["name"]] = values
        return out
    elif isinstance(doc.get("instances"), list):
        rows = doc["instances"]
    elif isinstance(doc.get("inputs"), dict):
        return {k: values for k, v in doc["inputs"].items()
                if (values := flat(v)) is not None}
    elif isinstance(doc.get("inputs"), list):
        rows = doc["inputs"]
    else:
        rows = [doc]
    for row in rows:
        if isinstance(row, dict):
            for k, v in row.items():
                if not isinstance(v, (list, dict)) or not nested_over(v, MAX_NESTING):
                    out.setdefault(k, []).append(v)
    return out


def output_columns(doc: Any) -> dict[str, list[Any]]:
    """Output name -> values of a V2 answer, or ``predictions`` of a JSON answer."""
    if not isinstance(doc, dict):
        return {}
    if isinstance(doc.get("outputs"), list):
        return {t["name"]: values for t in doc["outputs"]
                if isinstance(t, dict) and isinstance(t.get("name"), str)
                and (values := flat(t.get("data"))) is not None}
    if isinstance(doc.get("predictions"), list):
        values = flat(doc["predictions"])
        return {"predictions": values} if values is not None else {}
    return {}


def flat(data: Any) -> list[Any] | None:
    """Every value of nested lists, in order; None when they nest over MAX_NESTING deep.

    Walked with its own stack: deep input is skipped, never a RecursionError per request (or
    later, when a too-deep value would be keyed as a category).
    """
    if not isinstance(data, list):
        too_deep = isinstance(data, dict) and nested_over(data, MAX_NESTING)
        return None if too_deep else [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, (list, dict)):  # one check per value on the common path
                if isinstance(item, dict):
                    if nested_over(item, MAX_NESTING - len(stack)):
                        return None
                elif len(stack) >= MAX_NESTING:
                    return None
                else:
                    stack.append(iter(item))  # descend; this level resumes where it stopped
                    break
            out.append(item)
        else:
            stack.pop()
    return out


def nested_over(value: Any, limit: int) -> bool:
    """Lists and objects in ``value`` nest more than ``limit`` deep."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return False


def json_field(doc: Any, key: str) -> str | None:
    """A sticky key from a JSON body: top level, first row of instances/inputs, or a V2 input."""
    if isinstance(doc, dict):
        if key in doc and not isinstance(doc[key], (dict, list)):
            return str(doc[key])
        for rows_key in ("instances", "inputs"):
            rows = doc.get(rows_key)
            if isinstance(rows, list) and rows:
                first = rows[0]
                if isinstance(first, dict):
                    if first.get("name") == key and isinstance(first.get("data"), list) \
                            and first["data"]:
                        value = first["data"][0]
                        while isinstance(value, list) and value:
                            value = value[0]
                        return None if isinstance(value, (list, dict)) else str(value)
                    for row in rows:
                        if isinstance(row, dict) and row.get("name") == key:
                            return json_field({"inputs": [row]}, key)
                    if key in first and not isinstance(first[key], (dict, list)):
                        return str(first[key])
            elif isinstance(rows, dict) and key in rows:  # {"inputs": {features}}
                value = rows[key]
                return None if isinstance(value, (dict, list)) else str(value)
    return None
