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

import hashlib
import struct
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


# What the router turns into Python values per body: past these, reading one request would
# hold the event loop (and memory) for longer than answering hundreds. A body with more is
# forwarded unread (``TooManyElements``): validation ``enforce`` refuses it, the log keeps a
# marker. BYTES elements cost a Python string each, so fewer of them.
MAX_ELEMENTS = 1_000_000
MAX_BYTES_ELEMENTS = 100_000


class TooManyElements(TensorError):
    """A body whose tensors hold more elements than the router reads; ``doc`` is its JSON
    header (or message) without the tensors' data."""

    def __init__(self, count: int, limit: int, doc: dict[str, Any]) -> None:
        super().__init__(f"the tensors hold {count} elements; the router reads at most "
                         f"{limit}")
        self.count, self.doc = count, doc


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


class Budget:
    """Counts the elements of one body before any is read (``take``)."""

    __slots__ = ("fixed", "strings", "doc")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.fixed = self.strings = 0
        self.doc = doc

    def take(self, datatype: Any, count: int) -> None:
        if datatype == "BYTES":
            self.strings += count
            if self.strings > MAX_BYTES_ELEMENTS:
                raise TooManyElements(self.strings, MAX_BYTES_ELEMENTS, self.doc)
        else:
            self.fixed += count
            if self.fixed > MAX_ELEMENTS:
                raise TooManyElements(self.fixed, MAX_ELEMENTS, self.doc)


def text(raw: bytes) -> str:
    """A BYTES element as the JSON form holds it: UTF-8 text, other bytes as ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


def decode(raw: bytes | memoryview, datatype: Any, shape: Any, name: str) -> list[Any] | None:
    """The elements of one raw tensor, flat, as JSON values; None for a datatype this module
    does not read (BF16: NumPy has none), whose bytes still pass through.

    Raises TensorError when the byte count does not match ``shape`` x ``datatype``. The
    caller bounds the element count first (``Budget``).
    """
    count = element_count(shape, name)
    if datatype == "BYTES":
        return _bytes_elements(bytes(raw), count, name)
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


_LENGTH = struct.Struct("<I")


def _bytes_elements(raw: bytes, count: int, name: str) -> list[Any]:
    """BYTES elements (4-byte little-endian length, then the bytes); stops at the first one
    past what the shape holds, so a body cannot make it read more than ``count``."""
    out: list[Any] = []
    offset, end = 0, len(raw)
    unpack = _LENGTH.unpack_from
    while offset < end:
        if len(out) == count:
            raise TensorError(f"tensor {name!r}: more BYTES elements than its shape holds "
                              f"({count})")
        if offset + 4 > end:
            raise TensorError(f"tensor {name!r}: a BYTES element's length is cut off")
        (size,) = unpack(raw, offset)
        offset += 4
        if offset + size > end:
            raise TensorError(f"tensor {name!r}: a BYTES element of {size} bytes runs past "
                              f"the tensor's end")
        out.append(raw[offset:offset + size].decode("utf-8", "backslashreplace"))
        offset += size
    if len(out) != count:
        raise TensorError(f"tensor {name!r}: {len(out)} BYTES elements, but its shape "
                          f"holds {count}")
    return out


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's size from ``Inference-Header-Content-Length``; None without it.

    Raises TensorError unless it is ASCII digits giving a size within the body."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise TensorError(f"Inference-Header-Content-Length is not a decimal integer: "
                          f"{value[:32]!r}")
    size = int(value)
    if size > body_size:
        raise TensorError(f"Inference-Header-Content-Length {size} is outside the "
                          f"{body_size}-byte body")
    return size


def binary_header(body: bytes, size: int, key: str) -> dict[str, Any]:
    """The JSON header of a binary-extension body: an object with a ``key`` list."""
    try:
        doc = orjson.loads(memoryview(body)[:size])
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"the binary body's JSON header is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise TensorError(f"the binary body's JSON header has no {key} list")
    return doc


def binary_json(body: bytes, size: int, key: str,
                doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON equivalent of a binary-extension body: the header's ``key`` tensors
    (``inputs`` of a request, ``outputs`` of an answer) get their ``data`` from the bytes that
    follow, in order, and lose ``binary_data_size``; ``"binary": true`` marks the document.
    ``doc`` is the header when the caller already read it (``binary_header``).

    Raises TensorError (naming the tensor) when the sizes do not add up, TooManyElements
    before reading any when they hold more than the router reads."""
    doc = binary_header(body, size, key) if doc is None else doc
    tensors: list[Any] = doc[key]
    slices = []
    offset = size
    for tensor in tensors:
        if not isinstance(tensor, dict):
            raise TensorError(f"every item of {key} must be an object")
        params = tensor.get("parameters")
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        name = str(tensor.get("name"))[:64]
        length = params["binary_data_size"]
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise TensorError(f"tensor {name!r}: binary_data_size must be a non-negative "
                              f"integer")
        if offset + length > len(body):
            raise TensorError(f"tensor {name!r}: binary_data_size {length} runs past the "
                              f"body's end ({len(body) - offset} bytes left)")
        slices.append((tensor, name, offset, length))
        offset += length
    if offset != len(body):
        raise TensorError(f"{len(body) - offset} bytes follow the last binary tensor")
    budget = Budget(doc)
    for tensor, name, _, _ in slices:
        budget.take(tensor.get("datatype"), element_count(tensor.get("shape"), name))
    view = memoryview(body)
    for tensor, name, start, length in slices:
        params = tensor["parameters"]
        del params["binary_data_size"]
        if not params:
            del tensor["parameters"]
        tensor["data"] = decode(view[start:start + length], tensor.get("datatype"),
                                tensor.get("shape"), name)
    doc["binary"] = True
    return doc


def unread(body: bytes, count: int) -> dict[str, Any]:
    """How the log keeps a body whose tensors were not read (TooManyElements)."""
    return {"_unread": True, "elements": count, "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}


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
    malformed one, or one with more elements than the router reads."""
    size = answer_header(headers, len(body))
    if size is None:
        return None
    try:
        return binary_json(body, size, "outputs")
    except TensorError:
        return None
