"""Cost of request validation per request: one 30-feature row, and a 100-row batch.

    python loadtest/validation_bench.py

Times Validator.validate on already-parsed bodies (the proxy parses once and shares the
document with sticky routing), and orjson.loads of the same body for scale.
"""

from __future__ import annotations

import random
import timeit

import orjson

from router.config.registry import Field, Schema
from router.validation import Validator


def schema(n: int) -> Schema:
    fields = []
    for i in range(n):
        kind = ("float", "float", "int", "string", "bool")[i % 5]
        fields.append(Field(f"f{i}", kind, min=0 if kind in ("float", "int") else None,
                            max=1e6 if kind == "float" else None,
                            enum=("a", "b", "c") if kind == "string" else None))
    return Schema("bench@1", tuple(fields))


def value(f: Field, rng: random.Random):
    return {"float": rng.random() * 100, "int": rng.randrange(100),
            "string": rng.choice("abc"), "bool": rng.random() < 0.5}[f.type]


def main() -> None:
    rng = random.Random(3)
    s = schema(30)
    row = {f.name: value(f, rng) for f in s.fields}
    batch = {"instances": [{f.name: value(f, rng) for f in s.fields} for _ in range(100)]}
    v2 = {"inputs": [{"name": f.name, "datatype": {"float": "FP64", "int": "INT64",
                                                   "string": "BYTES", "bool": "BOOL"}[f.type],
                      "shape": [100], "data": [value(f, rng) for _ in range(100)]}
                     for f in s.fields]}
    json_v = Validator(s, "json")
    v2_v = Validator(s, "v2")
    assert json_v.validate(row) == [] and json_v.validate(batch) == [] and v2_v.validate(v2) == []
    cases = [("json, 1 row x 30 features", json_v, row),
             ("json, 100 rows x 30 features", json_v, batch),
             ("v2, 30 named inputs x 100 rows", v2_v, v2)]
    print(f"{'case':<34} {'validate':>12} {'orjson.loads':>14}")
    for name, validator, doc in cases:
        body = orjson.dumps(doc)
        n = 2000 if "100" in name else 50_000
        t_validate = min(timeit.repeat(lambda: validator.validate(doc), number=n, repeat=5)) / n
        t_parse = min(timeit.repeat(lambda: orjson.loads(body), number=n, repeat=5)) / n
        print(f"{name:<34} {t_validate * 1e6:>9.1f} us {t_parse * 1e6:>11.1f} us")


if __name__ == "__main__":
    main()
