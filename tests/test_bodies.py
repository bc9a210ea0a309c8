"""router/bodies.py, pure: every request and answer shape its readers understand, as tables.

No files, no sockets: each row is a parsed body and what the reader must return for it.
"""

from __future__ import annotations

from typing import Any

import pytest

from router.bodies import (
    MAX_NESTING,
    category,
    flat,
    input_columns,
    json_field,
    json_layout,
    output_columns,
    prediction_rows,
)

FIELDS = ("amount", "country")


def tensor(name: str, data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": "FP64", "shape": shape or [len(data)], "data": data}


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


# -- input_columns -----------------------------------------------------------------------------

INPUT_COLUMNS: list[tuple[str, Any, str, tuple[str, ...], dict[str, list[Any]]]] = [
    ("v2_named_inputs", {"inputs": [tensor("amount", [1.5, 2.5]), tensor("country", ["US", "DE"])]},
     "v2", FIELDS, {"amount": [1.5, 2.5], "country": ["US", "DE"]}),
    ("v2_named_inputs_without_fields", {"inputs": [tensor("amount", [[1.0], [2.0]], [2, 1])]},
     "v2", (), {"amount": [1.0, 2.0]}),
    ("v2_single_matrix_by_schema_order",
     {"inputs": [tensor("input-0", [[9.5, "US"], [3.0, "FR"]], [2, 2])]}, "v2", FIELDS,
     {"amount": [9.5, 3.0], "country": ["US", "FR"]}),
    ("v2_single_matrix_flat_data",
     {"inputs": [tensor("input-0", [9.5, "US", 3.0, "FR"], [2, 2])]}, "v2", FIELDS,
     {"amount": [9.5, 3.0], "country": ["US", "FR"]}),
    ("v2_matrix_of_the_wrong_width_is_nothing",
     {"inputs": [tensor("input-0", [[1, 2, 3]], [1, 3])]}, "v2", FIELDS, {}),
    ("v2_matrix_without_fields_is_a_named_input",
     {"inputs": [tensor("input-0", [[1, 2]], [1, 2])]}, "v2", (), {"input-0": [1, 2]}),
    ("v2_one_input_named_after_a_field_is_not_a_matrix",
     {"inputs": [tensor("amount", [4.0])]}, "v2", FIELDS, {"amount": [4.0]}),
    ("v2_not_inputs_is_nothing", {"instances": [{"amount": 1}]}, "v2", FIELDS, {}),
    ("v2_input_not_an_object_is_nothing", {"inputs": [[1, 2]]}, "v2", FIELDS, {}),
    ("v2_unnamed_input_skipped", {"inputs": [{"data": [1]}, tensor("country", ["US"])]}, "v2",
     (), {"country": ["US"]}),
    ("v2_too_deep_input_left_out",
     {"inputs": [tensor("amount", deep(MAX_NESTING + 1)), tensor("country", ["US"])]}, "v2",
     (), {"country": ["US"]}),
    ("json_object_is_one_row", {"amount": 1.0, "country": "US"}, "json", FIELDS,
     {"amount": [1.0], "country": ["US"]}),
    ("json_instances_rows", {"instances": [{"amount": 1}, {"amount": 2, "country": "DE"}]},
     "json", FIELDS, {"amount": [1, 2], "country": ["DE"]}),
    ("json_inputs_rows", {"inputs": [{"amount": 1}, {"amount": 2}]}, "json", (),
     {"amount": [1, 2]}),
    ("json_inputs_columns", {"inputs": {"amount": [1, 2], "country": "US"}}, "json", (),
     {"amount": [1, 2], "country": ["US"]}),
    ("json_bare_list_of_rows", [{"amount": 3}], "json", (), {"amount": [3]}),
    ("json_list_rows_in_field_order", {"instances": [[1.0, "US"], [2.0, "FR"]]}, "json",
     FIELDS, {"amount": [1.0, 2.0], "country": ["US", "FR"]}),
    ("json_list_rows_without_fields_are_nothing", {"instances": [[1.0, "US"]]}, "json", (),
     {}),
    ("json_list_row_of_the_wrong_width_skipped", {"instances": [[1.0], [2.0, "DE"]]}, "json",
     FIELDS, {"amount": [2.0], "country": ["DE"]}),
    ("json_instances_not_a_list_is_nothing", {"instances": "rows"}, "json", FIELDS, {}),
    ("json_too_deep_value_left_out",
     {"instances": [{"amount": deep(MAX_NESTING + 1), "country": "US"}]}, "json", FIELDS,
     {"country": ["US"]}),
]


@pytest.mark.parametrize("doc,protocol,fields,expected", [c[1:] for c in INPUT_COLUMNS],
                         ids=[c[0] for c in INPUT_COLUMNS])
def test_input_columns(doc: Any, protocol: str, fields: tuple[str, ...],
                       expected: dict[str, list[Any]]) -> None:
    assert input_columns(doc, protocol, fields) == expected


# -- output_columns ----------------------------------------------------------------------------

OUTPUT_COLUMNS: list[tuple[str, Any, dict[str, list[Any]]]] = [
    ("v2_outputs_by_name",
     {"outputs": [tensor("score", [[0.1], [0.9]], [2, 1]), tensor("label", ["a", "b"])]},
     {"score": [0.1, 0.9], "label": ["a", "b"]}),
    ("v2_output_without_a_name_skipped", {"outputs": [{"data": [1]}, tensor("s", [2])]},
     {"s": [2]}),
    ("v2_too_deep_output_left_out",
     {"outputs": [tensor("s", deep(MAX_NESTING + 1)), tensor("t", [1])]}, {"t": [1]}),
    ("json_predictions", {"predictions": [[0.2, 0.8], [0.6, 0.4]]},
     {"predictions": [0.2, 0.8, 0.6, 0.4]}),
    ("json_too_deep_predictions_are_nothing", {"predictions": deep(MAX_NESTING + 1)}, {}),
    ("neither_shape_is_nothing", {"result": [1]}, {}),
    ("not_an_object_is_nothing", [0.5], {}),
]


@pytest.mark.parametrize("doc,expected", [c[1:] for c in OUTPUT_COLUMNS],
                         ids=[c[0] for c in OUTPUT_COLUMNS])
def test_output_columns(doc: Any, expected: dict[str, list[Any]]) -> None:
    assert output_columns(doc) == expected


# -- json_field (sticky keys) ------------------------------------------------------------------

# A V2 input named after the key with no data made json_field call itself for ever (a
# RecursionError, a 500 per request on a sticky json_field route): the two empty_data rows.
JSON_FIELD = [
    pytest.param({"user_id": "alice", "amount": 1}, "alice", id="top_level"),
    pytest.param({"user_id": 42}, "42", id="top_level_number_as_text"),
    pytest.param({"user_id": {"id": 1}}, None, id="top_level_object_is_not_a_key"),
    pytest.param({"instances": [{"user_id": "bob"}, {"user_id": "zed"}]}, "bob",
                 id="first_instance"),
    pytest.param({"inputs": [{"user_id": "carol"}]}, "carol", id="first_input_row"),
    pytest.param({"instances": [{"amount": 1}, {"user_id": "zed"}]}, None,
                 id="later_rows_ignored"),
    pytest.param({"inputs": [tensor("user_id", ["dave", "x"])]}, "dave",
                 id="v2_input_first_value"),
    pytest.param({"inputs": [tensor("user_id", [["erin"], ["x"]], [2, 1])]}, "erin",
                 id="v2_input_nested_first_value"),
    pytest.param({"inputs": [tensor("amount", [1.0]), tensor("user_id", [7])]}, "7",
                 id="v2_input_not_first"),
    pytest.param({"inputs": [tensor("user_id", [])]}, None, id="v2_input_with_empty_data"),
    pytest.param({"inputs": [tensor("amount", [1.0]), tensor("user_id", [])]}, None,
                 id="v2_later_input_with_empty_data"),
    pytest.param({"inputs": {"user_id": "frank", "amount": [1]}}, "frank",
                 id="inputs_as_columns"),
    pytest.param({"inputs": {"user_id": ["frank"]}}, None, id="inputs_column_list_is_not_a_key"),
    pytest.param({"instances": [{"amount": 1}]}, None, id="absent"),
    pytest.param(["user_id"], None, id="not_an_object"),
]


@pytest.mark.parametrize("doc,expected", JSON_FIELD)
def test_json_field(doc: Any, expected: str | None) -> None:
    assert json_field(doc, "user_id") == expected


# -- json_layout, prediction_rows, flat, category ----------------------------------------------

JSON_LAYOUT: list[tuple[str, Any, tuple[str, Any]]] = [
    ("object_is_a_row", {"amount": 1}, ("row", {"amount": 1})),
    ("instances_are_rows", {"instances": [1], "inputs": [2]}, ("rows", [1])),
    ("inputs_list_are_rows", {"inputs": [2]}, ("rows", [2])),
    ("inputs_object_are_columns", {"inputs": {"a": [1]}}, ("columns", {"a": [1]})),
    ("bare_value_is_rows", [[1, 2]], ("rows", [[1, 2]])),
]


@pytest.mark.parametrize("doc,expected", [c[1:] for c in JSON_LAYOUT],
                         ids=[c[0] for c in JSON_LAYOUT])
def test_json_layout(doc: Any, expected: tuple[str, Any]) -> None:
    assert json_layout(doc) == expected


PREDICTION_ROWS: list[tuple[str, Any, list[list[Any]] | None]] = [
    ("v2_first_output_split_by_shape",
     {"outputs": [tensor("p", [0.1, 0.9, 0.8, 0.2], [2, 2]), tensor("q", [5])]},
     [[0.1, 0.9], [0.8, 0.2]]),
    ("v2_nested_data", {"outputs": [tensor("p", [[0.3], [0.7]], [2, 1])]}, [[0.3], [0.7]]),
    ("predictions_list", {"predictions": [[0.1, 0.9], 1]}, [[0.1, 0.9], [1]]),
    ("predictions_of_objects", {"predictions": [{"label": "cat", "p": 0.9}]},
     [["cat", 0.9]]),
    ("a_list", ["cat", "dog"], [["cat"], ["dog"]]),
    ("an_object_is_one_row", {"label": "cat"}, [["cat"]]),
    ("a_scalar_is_one_row", 0.5, [[0.5]]),
    ("too_deep_is_not_comparable", {"predictions": [deep(MAX_NESTING + 2)]}, None),
]


@pytest.mark.parametrize("doc,expected", [c[1:] for c in PREDICTION_ROWS],
                         ids=[c[0] for c in PREDICTION_ROWS])
def test_prediction_rows(doc: Any, expected: list[list[Any]] | None) -> None:
    assert prediction_rows(doc) == expected


FLAT: list[tuple[str, Any, list[Any] | None]] = [
    ("scalar_is_one_value", 3, [3]),
    ("object_is_one_value", {"a": 1}, [{"a": 1}]),
    ("nested_lists_in_order", [[1, [2, 3]], [], [4]], [1, 2, 3, 4]),
    ("objects_inside_kept_whole", [[{"a": [1]}], 2], [{"a": [1]}, 2]),
    ("at_the_limit", deep(MAX_NESTING - 1), [1]),
    ("over_the_limit", deep(MAX_NESTING + 1), None),
    ("too_deep_object_inside", [deep(MAX_NESTING, {"a": 1})], None),
]


@pytest.mark.parametrize("data,expected", [c[1:] for c in FLAT], ids=[c[0] for c in FLAT])
def test_flat(data: Any, expected: list[Any] | None) -> None:
    assert flat(data) == expected


CATEGORY = [
    ("true", True, "true"),
    ("false", False, "false"),
    ("text", "US", "US"),
    ("integer", 1, "1"),
    ("float", 1.5, "1.5"),
    ("none", None, "None"),
]


@pytest.mark.parametrize("value,expected", [c[1:] for c in CATEGORY],
                         ids=[c[0] for c in CATEGORY])
def test_category(value: Any, expected: str) -> None:
    assert category(value) == expected


def test_a_boolean_is_not_keyed_as_the_integer_it_equals() -> None:
    assert category(True) != category(1) and category(False) != category(0)
