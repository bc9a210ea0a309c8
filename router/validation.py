"""Request-time validation against the route's ``input_schema``, compiled once per config.

A ``Validator`` is built when the config loads (one closure per field) and called on the
parsed body of each request. It returns every violation as
``{"field", "kind", "expected", "got", "row"}``; kinds are missing | type | null | min | max |
enum | datatype | shape | format.

Shapes understood are those ``bodies`` reads (``v2``: each named input is a feature, or one
2-D input whose columns are the schema's fields in order; ``json``: an object of features,
rows, or columns): this module only checks the values those readers find.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .bodies import (
    MAX_NESTING,
    json_layout,
    matrix_shape,
    shape_holds,
    tensor_values,
    v2_matrix,
    v2_tensors,
)
if TYPE_CHECKING:  # annotations only: config compiles validators, so it imports this module
    from .config.registry import Field, Schema

Violation = dict[str, Any]
Check = Callable[[Any], "tuple[str, Any] | None"]

V2_DATATYPES = {
    "float": frozenset({"FP16", "FP32", "FP64", "BF16", "INT8", "INT16", "INT32", "INT64",
                        "UINT8", "UINT16", "UINT32", "UINT64"}),
    "int": frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}),
    "string": frozenset({"BYTES"}),
    "bool": frozenset({"BOOL"}),
}
_MISSING = object()


def _shown(value: Any) -> Any:
    """A violating value as reported: strings cut to 64 characters, containers named."""
    if isinstance(value, str) and len(value) > 64:
        return value[:64] + "..."
    if isinstance(value, (list, dict)):
        return type(value).__name__
    if isinstance(value, int) and not -(2 ** 63) <= value < 2 ** 64:
        return str(value)  # beyond what JSON encoders here can write
    return value


def compile_check(f: Field) -> Check:
    """One closure per field: (kind, expected) for a bad value, None for a good one."""
    low, high, nullable = f.min, f.max, f.nullable
    enum = frozenset(f.enum) if f.enum is not None else None
    listed = list(f.enum) if f.enum is not None else None

    def null(value: Any) -> tuple[str, Any] | None:
        return None if nullable else ("null", f.type)

    if f.type in ("float", "int"):
        integer = f.type == "int"

        def check(value: Any) -> tuple[str, Any] | None:
            if value is None:
                return null(value)
            if value.__class__ is bool or not isinstance(value, (int, float)):
                return ("type", f.type)
            if integer and value.__class__ is float and not value.is_integer():
                return ("type", "int")
            if low is not None and value < low:
                return ("min", low)
            if high is not None and value > high:
                return ("max", high)
            if enum is not None and value not in enum:
                return ("enum", listed)
            return None
    elif f.type == "string":
        def check(value: Any) -> tuple[str, Any] | None:
            if value is None:
                return null(value)
            if value.__class__ is not str:
                return ("type", "string")
            if enum is not None and value not in enum:
                return ("enum", listed)
            return None
    else:
        def check(value: Any) -> tuple[str, Any] | None:
            if value is None:
                return null(value)
            if value.__class__ is not bool:
                return ("type", "bool")
            return None
    return check


def _too_deep(field: str | None) -> Violation:
    return {"field": field, "kind": "shape",
            "expected": f"data nested at most {MAX_NESTING} deep",
            "got": f"nested over {MAX_NESTING} deep", "row": None}


class Validator:
    """Compiled checks for one schema and protocol; ``validate(doc)`` never raises."""

    def __init__(self, schema: Schema, protocol: str) -> None:
        self.schema = schema
        self.protocol = protocol
        self.fields = schema.fields
        self.names = tuple(f.name for f in schema.fields)
        self.checks = tuple((f.name, f.required, compile_check(f)) for f in schema.fields)
        # v2: the same, with the tensor datatypes each field accepts
        self._v2_checks = tuple((name, required, check, V2_DATATYPES[f.type])
                                for (name, required, check), f in zip(self.checks, schema.fields))

    def __repr__(self) -> str:
        return f"<Validator {self.schema.id} {self.protocol} {len(self.fields)} fields>"

    def validate(self, doc: Any) -> list[Violation]:
        if self.protocol == "v2":
            return self._v2(doc)
        return self._json(doc)

    # -- json ------------------------------------------------------------------------------

    def _json(self, doc: Any) -> list[Violation]:
        out: list[Violation] = []
        kind, rows = json_layout(doc)
        if kind == "row":
            self._row(rows, 0, out)
            return out
        if kind == "columns":
            return self._columns(rows, out)
        if not isinstance(rows, list):
            return [{"field": None, "kind": "format", "expected": "a list of rows",
                     "got": _shown(rows), "row": None}]
        for i, row in enumerate(rows):
            self._row(row, i, out)
        return out

    def _row(self, row: Any, index: int, out: list[Violation]) -> None:
        if isinstance(row, dict):
            get = row.get
            for name, required, check in self.checks:
                value = get(name, _MISSING)
                if value is _MISSING:
                    if required:
                        out.append({"field": name, "kind": "missing", "expected": "present",
                                    "got": None, "row": index})
                    continue
                bad = check(value)
                if bad is not None:
                    out.append({"field": name, "kind": bad[0], "expected": bad[1],
                                "got": _shown(value), "row": index})
        elif isinstance(row, list):
            if len(row) != len(self.checks):
                out.append({"field": None, "kind": "shape",
                            "expected": f"{len(self.checks)} values ({', '.join(self.names)})",
                            "got": len(row), "row": index})
                return
            for (name, _, check), value in zip(self.checks, row):
                bad = check(value)
                if bad is not None:
                    out.append({"field": name, "kind": bad[0], "expected": bad[1],
                                "got": _shown(value), "row": index})
        else:
            out.append({"field": None, "kind": "format", "expected": "an object or a list",
                        "got": _shown(row), "row": index})

    def _columns(self, columns: dict[str, Any], out: list[Violation]) -> list[Violation]:
        lengths = {len(v) for v in columns.values() if isinstance(v, list)}
        if not lengths:  # {field: value}: one row
            self._row(columns, 0, out)
            return out
        n = max(lengths)
        for name, required, check in self.checks:
            column = columns.get(name, _MISSING)
            if column is _MISSING:
                if required:
                    out.append({"field": name, "kind": "missing", "expected": "present",
                                "got": None, "row": None})
                continue
            if not isinstance(column, list) or len(column) != n:
                out.append({"field": name, "kind": "shape", "expected": f"{n} values",
                            "got": len(column) if isinstance(column, list) else 1,
                            "row": None})
                continue
            self._values(name, check, column, out)
        return out

    @staticmethod
    def _values(name: str, check: Check, values: list[Any], out: list[Violation]) -> None:
        for i, value in enumerate(values):
            bad = check(value)
            if bad is not None:
                out.append({"field": name, "kind": bad[0], "expected": bad[1],
                            "got": _shown(value), "row": i})

    # -- v2 --------------------------------------------------------------------------------

    def _v2(self, doc: Any) -> list[Violation]:
        by_name = v2_tensors(doc)
        if by_name is None:
            return [{"field": None, "kind": "format",
                     "expected": '{"inputs": [{"name", "datatype", "shape", "data"}]}',
                     "got": _shown(doc), "row": None}]
        out: list[Violation] = []
        matrix = v2_matrix(doc, self.names)
        if matrix is not None:
            return self._v2_matrix(matrix, out)
        rows: int | None = None
        for name, required, check, datatypes in self._v2_checks:
            tensor = by_name.get(name)
            if tensor is None:
                if required:
                    out.append({"field": name, "kind": "missing", "expected": "present",
                                "got": None, "row": None})
                continue
            data = tensor_values(tensor.get("data"))
            if data is None:
                out.append(_too_deep(name))
                continue
            shape = tensor.get("shape")
            if tensor.get("datatype") not in datatypes:
                out.append({"field": name, "kind": "datatype", "expected": sorted(datatypes),
                            "got": _shown(tensor.get("datatype")), "row": None})
                continue
            count = len(data)
            if not (shape.__class__ is list and len(shape) == 1 and shape[0] == count
                    and shape[0].__class__ is int) and not shape_holds(shape, count):
                out.append({"field": name, "kind": "shape",
                            "expected": f"shape whose product is {count}",
                            "got": _shown(shape), "row": None})
                continue
            if rows is None:
                rows = count
            elif count != rows:
                out.append({"field": name, "kind": "shape", "expected": f"{rows} rows",
                            "got": count, "row": None})
                continue
            for i, value in enumerate(data):
                bad = check(value)
                if bad is not None:
                    out.append({"field": name, "kind": bad[0], "expected": bad[1],
                                "got": _shown(value), "row": i})
        return out

    def _v2_matrix(self, tensor: dict[str, Any], out: list[Violation]) -> list[Violation]:
        shape = tensor.get("shape")
        width = len(self.checks)
        data = tensor_values(tensor.get("data"))
        if data is None:
            out.append(_too_deep(None))
            return out
        if not matrix_shape(shape, width, len(data)):
            out.append({"field": None, "kind": "shape",
                        "expected": f"[rows, {width}] with columns {', '.join(self.names)}",
                        "got": _shown(shape), "row": None})
            return out
        for r in range(shape[0]):
            row = data[r * width:(r + 1) * width]
            for (name, _, check), value in zip(self.checks, row):
                bad = check(value)
                if bad is not None:
                    out.append({"field": name, "kind": bad[0], "expected": bad[1],
                                "got": _shown(value), "row": r})
        return out
