"""V2 tensors in their binary forms, read as their JSON equivalents.

The Open Inference Protocol carries a tensor as JSON (``data``, a list), as raw bytes after a
JSON header (the binary tensor extension over HTTP: ``Inference-Header-Content-Length``), or
as raw or typed contents of a gRPC message. Validation, drift, shadow comparison and the
prediction log read one form, the JSON one; this module turns the raw bytes into it. The bytes
themselves are forwarded untouched: nothing here writes a body that goes upstream.

Raw bytes are the flattened, row-major, little-endian elements; BYTES elements are each a
4-byte little-endian length and the bytes. Fixed-size types are read with NumPy
(``frombuffer``: no copy of the bytes; ``tolist`` makes the Python values the JSON form
holds). A size that does not add up is a ``TensorError`` naming the tensor (400 / 
INVALID_ARGUMENT).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

HEADER = "inference-header-content-length"      # the extension's header, lower-cased

# Fixed-size V2 datatypes -> NumPy dtypes (little-endian, as the protocol sends them).
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code) for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"),
        ("UINT64", "<u8"), ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"),
        ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"))}


class TensorError(ValueError):
    """A tensor whose bytes do not match its shape and datatype, or a malformed body."""


def element_count(shape: Any, name: str) -> int:
    """The number of elements ``shape`` holds; TensorError unless it is non-negative ints."""
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TensorError(f"tensor {name!r}: shape must be a list of non-negative integers, "
                          f"got {str(shape)[:80]}")
    count = 1
    for d in shape:
        count *= d
    return count


def text(raw: bytes) -> str:
    """A BYTES element as the JSON form holds it: UTF-8 text, other bytes as ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


def decode(raw: bytes | memoryview, datatype: Any, shape: Any, name: str) -> list[Any] | None:
    """The elements of one raw tensor, flat, as JSON values; None for a datatype this module
    does not read (BF16: NumPy has none), whose bytes still pass through.

    Raises TensorError when the byte count does not match ``shape`` x ``datatype``.
    """
    count = element_count(shape, name)
    if datatype == "BYTES":
        return _bytes_elements(memoryview(raw), count, name)
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        if datatype == "BF16":
            if len(raw) != count * 2:
                raise TensorError(f"tensor {name!r}: {len(raw)} bytes, but shape "
                                  f"{list(shape)} of BF16 needs {count * 2}")
            return None
        raise TensorError(f"tensor {name!r}: unknown datatype {str(datatype)[:32]!r}")
    if len(raw) != count * dtype.itemsize:
        raise TensorError(f"tensor {name!r}: {len(raw)} bytes, but shape {list(shape)} of "
                          f"{datatype} needs {count * dtype.itemsize}")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def _bytes_elements(view: memoryview, count: int, name: str) -> list[Any]:
    out: list[Any] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise TensorError(f"tensor {name!r}: a BYTES element's length is cut off")
        size = int.from_bytes(view[offset:offset + 4], "little")
        offset += 4
        if offset + size > end:
            raise TensorError(f"tensor {name!r}: a BYTES element of {size} bytes runs past "
                              f"the tensor's end")
        out.append(text(bytes(view[offset:offset + size])))
        offset += size
    if len(out) != count:
        raise TensorError(f"tensor {name!r}: {len(out)} BYTES elements, but its shape "
                          f"holds {count}")
    return out


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's size from ``Inference-Header-Content-Length``; None without it.

    Raises TensorError when it is not an integer within the body."""
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        raise TensorError(f"Inference-Header-Content-Length is not an integer: "
                          f"{value[:32]!r}") from None
    if not 0 <= size <= body_size:
        raise TensorError(f"Inference-Header-Content-Length {size} is outside the "
                          f"{body_size}-byte body")
    return size


def binary_json(body: bytes, size: int, key: str) -> dict[str, Any]:
    """The JSON equivalent of a binary-extension body: the header's ``key`` tensors
    (``inputs`` of a request, ``outputs`` of an answer) get their ``data`` from the bytes that
    follow, in order, and lose ``binary_data_size``; ``"binary": true`` marks the document.

    Raises TensorError (naming the tensor) when the sizes do not add up."""
    try:
        doc = orjson.loads(memoryview(body)[:size])
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"the binary body's JSON header is not JSON: {exc}") from None
    tensors = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(tensors, list):
        raise TensorError(f"the binary body's JSON header has no {key} list")
    view = memoryview(body)
    offset = size
    for tensor in tensors:
        if not isinstance(tensor, dict):
            raise TensorError(f"every item of {key} must be an object")
        params = tensor.get("parameters")
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        name = str(tensor.get("name"))[:64]
        length = params.pop("binary_data_size")
        if not params:
            del tensor["parameters"]
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise TensorError(f"tensor {name!r}: binary_data_size must be a non-negative "
                              f"integer")
        if offset + length > len(body):
            raise TensorError(f"tensor {name!r}: binary_data_size {length} runs past the "
                              f"body's end ({len(body) - offset} bytes left)")
        tensor["data"] = decode(view[offset:offset + length], tensor.get("datatype"),
                                tensor.get("shape"), name)
        offset += length
    if offset != len(body):
        raise TensorError(f"{len(body) - offset} bytes follow the last binary tensor")
    doc["binary"] = True
    return doc


def answer_header(headers: Iterable[tuple[str, str]], body_size: int) -> int | None:
    """The JSON header size of an answer in the binary tensor extension, from its headers;
    None for a JSON answer, or one whose header is unusable (it passes through as it came)."""
    for name, value in headers:
        if len(name) == len(HEADER) and name.lower() == HEADER:
            try:
                return header_length(value, body_size)
            except TensorError:
                return None
    return None


def binary_answer(headers: Iterable[tuple[str, str]], body: bytes) -> dict[str, Any] | None:
    """An answer in binary tensors as its JSON equivalent; None for any other answer, or a
    malformed one."""
    size = answer_header(headers, len(body))
    if size is None:
        return None
    try:
        return binary_json(body, size, "outputs")
    except TensorError:
        return None


def raw_contents(raw: bytes) -> dict[str, Any]:
    """Bytes the module cannot read as values, as the log keeps them."""
    return {"_base64": base64.b64encode(raw).decode()}
