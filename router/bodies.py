"""Readers of request and answer bodies: the one place body shapes are understood.

Request shapes (README.md "Feature schemas"; docs/architecture.md "Protocols"):

- ``v2`` (Open Inference Protocol): ``{"inputs": [tensor, ...]}``; each named input is a
  feature, or one 2-D input (the only one, not named after a field) whose columns are the
  schema's fields in order. ``v2_tensors``, ``v2_matrix``, ``matrix_shape``, ``tensor_values``.
- ``json``: an object of features, ``{"instances": rows}``, ``{"inputs": rows | {field:
  column}}``, or a list of rows; a row is an object, or a list in schema field order.
  ``json_layout``.

Who reads what: validation checks the layouts above value by value (per request, so those
readers copy nothing they need not); drift and baselines read ``input_columns``; output drift
and output baselines read ``output_columns``; shadow comparison reads ``prediction_rows``;
sticky routing reads ``json_field``.

Every walk has its own stack and a depth bound (``MAX_NESTING``): hostile nesting is skipped
or reported, never a RecursionError on a request's path or in a background task.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal, TypeGuard

MAX_NESTING = 64           # values nested deeper are not features: skipped (or reported)

JsonLayout = tuple[Literal["row", "columns", "rows"], Any]


# -- request shapes ------------------------------------------------------------------------------

def v2_tensors(doc: Any) -> dict[Any, dict[str, Any]] | None:
    """Input tensors of a V2 request by name (a repeated name: the last wins); None when the
    body is not ``{"inputs": [objects]}``."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list):
        return None
    by_name: dict[Any, dict[str, Any]] = {}
    for tensor in inputs:
        if tensor.__class__ is not dict:
            return None
        by_name[tensor.get("name")] = tensor
    return by_name


def v2_matrix(doc: dict[str, Any], names: Collection[str]) -> dict[str, Any] | None:
    """The single 2-D input whose columns are the fields ``names`` in order: the request's
    only input, not named after a field. ``doc`` is a body ``v2_tensors`` accepted."""
    inputs = doc["inputs"]
    if len(inputs) == 1 and inputs[0].get("name") not in names:
        tensor: dict[str, Any] = inputs[0]
        return tensor
    return None


def shape_holds(shape: Any, count: int) -> bool:
    """``shape`` is a list of non-negative ints whose product is ``count``."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return False
    product = 1
    for d in shape:
        product *= d
    return product == count


def matrix_shape(shape: Any, width: int, count: int) -> TypeGuard[list[int]]:
    """``shape`` is ``[rows, width]`` and holds ``count`` values."""
    return isinstance(shape, list) and len(shape) == 2 and shape[1] == width \
        and shape_holds(shape, count)


def tensor_values(data: Any) -> list[Any] | None:
    """The values of V2 ``data`` in row-major order, as the tensor carries them; None when
    nested over MAX_NESTING deep.

    A list whose first item is not a list holds values and is returned as is (no copy: this
    runs per request). A value that is itself a list or object is left in place for the caller
    to report; ``flat`` is the reader for values that are kept.
    """
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if not isinstance(item, list):
                out.append(item)
            elif not item or not isinstance(item[0], list):
                out.extend(item)
            elif len(stack) + 1 >= MAX_NESTING:
                return None
            else:
                stack.append(iter(item))  # descend; this level resumes where it stopped
                break
        else:
            stack.pop()
    return out


def json_layout(doc: Any) -> JsonLayout:
    """How a ``json`` request carries its features:

    ``("row", object)`` for an object of features; ``("columns", {field: column})`` for
    ``{"inputs": {...}}``; ``("rows", value)`` for ``{"instances": value}``, ``{"inputs":
    value}`` or a bare value, where ``value`` should be a list of rows (an object, or a list
    in schema field order) and anything else is malformed.
    """
    if isinstance(doc, dict):
        if "instances" in doc:
            return ("rows", doc["instances"])
        if "inputs" in doc:
            rows = doc["inputs"]
            return ("columns", rows) if isinstance(rows, dict) else ("rows", rows)
        return ("row", doc)
    return ("rows", doc)


def input_columns(doc: Any, protocol: str, fields: Sequence[str] = ()) -> dict[str, list[Any]]:
    """Feature name -> values of one request body, in every shape above; ``fields`` are the
    schema's field names in order, which name the columns of positional shapes (a single 2-D
    V2 tensor, list rows). Without them positional shapes yield nothing.

    A feature whose values nest over MAX_NESTING deep is left out (never raised).
    """
    out: dict[str, list[Any]] = {}
    if protocol == "v2":
        tensors = v2_tensors(doc)
        if tensors is None:
            return out
        matrix = v2_matrix(doc, fields) if fields else None
        if matrix is not None:
            values = flat(matrix.get("data"))
            if values is not None and matrix_shape(matrix.get("shape"), len(fields),
                                                   len(values)):
                width = len(fields)
                for i, name in enumerate(fields):
                    out[name] = values[i::width]
            return out
        for name, tensor in tensors.items():
            if isinstance(name, str):
                values = flat(tensor.get("data"))
                if values is not None:
                    out[name] = values
        return out
    kind, body = json_layout(doc)
    if kind == "columns":
        return {k: values for k, v in body.items() if (values := flat(v)) is not None}
    rows = [body] if kind == "row" else body if isinstance(body, list) else []
    width = len(fields)
    for row in rows:
        if isinstance(row, dict):
            items: Any = row.items()
        elif isinstance(row, list) and width and len(row) == width:
            items = zip(fields, row)
        else:
            continue
        for k, v in items:
            if not isinstance(v, (list, dict)) or not nested_over(v, MAX_NESTING):
                out.setdefault(k, []).append(v)
    return out


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
                    for row in rows:  # a V2 input named after the key: its first value
                        if isinstance(row, dict) and row.get("name") == key:
                            return _first_value(row.get("data"))
                    if key in first and not isinstance(first[key], (dict, list)):
                        return str(first[key])
            elif isinstance(rows, dict) and key in rows:  # {"inputs": {features}}
                value = rows[key]
                return None if isinstance(value, (dict, list)) else str(value)
    return None


def _first_value(data: Any) -> str | None:
    """The first scalar of a V2 input's (nested) data, as text; None when there is none."""
    value = data
    for _ in range(MAX_NESTING):
        if not isinstance(value, list) or not value:
            break
        value = value[0]
    return None if isinstance(value, (list, dict)) else str(value)


# -- answer shapes -------------------------------------------------------------------------------

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


def prediction_rows(doc: Any) -> list[list[Any]] | None:
    """Rows of an answer, each the scalars of one prediction: V2 ``outputs`` (the first
    output, split by its shape), ``predictions``, ``outputs`` or ``instances`` lists, a list,
    or the answer itself as one row. None (not comparable) when nested over MAX_NESTING."""
    if isinstance(doc, dict):
        outputs = doc.get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            first = outputs[0]
            data = scalars(first.get("data", []))
            if data is None:
                return None
            shape = first.get("shape") or [len(data)]
            n = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) \
                and shape[0] > 0 else len(data)
            width = max(1, len(data) // n) if n else 1
            return [data[i * width:(i + 1) * width] for i in range(n)]
        for key in ("predictions", "outputs", "instances"):
            if isinstance(doc.get(key), list):
                return _scalar_rows(doc[key])
        return _scalar_rows([doc])
    if isinstance(doc, list):
        return _scalar_rows(doc)
    return [[doc]]


def _scalar_rows(items: list[Any]) -> list[list[Any]] | None:
    rows = [scalars(item) for item in items]
    return None if any(row is None for row in rows) else rows  # type: ignore[return-value]


# -- walks ---------------------------------------------------------------------------------------

def category(value: Any) -> str:
    """How a categorical value is keyed in a baseline (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flat(data: Any) -> list[Any] | None:
    """Every value of nested lists, in order (an object is one value); None when they nest
    over MAX_NESTING deep: the reader for values that are kept (drift windows, baselines).

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


def scalars(value: Any) -> list[Any] | None:
    """The scalars of nested lists and objects (an object's values), in order; None when they
    nest over MAX_NESTING deep. Walked with its own stack, never a RecursionError."""
    out: list[Any] = []
    stack = [iter((value,))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, (list, dict)):
                if len(stack) > MAX_NESTING:
                    return None
                stack.append(iter(item.values() if isinstance(item, dict) else item))
                break  # descend; this level resumes where it stopped
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
