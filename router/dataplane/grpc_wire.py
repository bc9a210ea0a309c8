"""gRPC V2 messages as the router reads them: their JSON equivalents, the one-field rewrite
of a forwarded call, and the status codes the router's errors become.

The front end (``grpc_front``) forwards a call's bytes; these functions only read them, so
validation, drift, shadows and the log see the same JSON documents an HTTP client's request
would give them, and never change what goes upstream except through ``renamed``.
"""

from __future__ import annotations

from typing import Any

import grpc

from ..errors import RouterError
from ..tensors import Budget, TensorError, decode, element_count, text
from .oip import inference_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"

# Typed contents: the field of InferTensorContents each datatype uses.
_TYPED = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
          "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
          "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
          "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}

# The router's errors (errors.py codes) as gRPC status codes (DESIGN.md "Protocols on the wire").
STATUS = {
    "no_route": grpc.StatusCode.NOT_FOUND,
    "version_not_found": grpc.StatusCode.NOT_FOUND,
    "bad_request": grpc.StatusCode.INVALID_ARGUMENT,
    "bad_override": grpc.StatusCode.INVALID_ARGUMENT,
    "schema_violation": grpc.StatusCode.INVALID_ARGUMENT,
    "body_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "upstream_unavailable": grpc.StatusCode.UNAVAILABLE,
    "upstream_timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "overloaded": grpc.StatusCode.UNAVAILABLE,
    "draining": grpc.StatusCode.UNAVAILABLE,
    "prediction_log_unavailable": grpc.StatusCode.UNAVAILABLE,
}

# A gRPC status as the HTTP status it stands for (the usual gateway mapping): what the
# record's ``status``, error rates and rollout checks read for a gRPC call.
HTTP = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


def status_of(err: RouterError) -> grpc.StatusCode:
    return STATUS.get(err.code, grpc.StatusCode.INTERNAL)


def renamed(data: bytes, name: str, version: str) -> bytes:
    """A serialized ModelInferRequest (or ModelMetadata/ModelReadyRequest: the same field
    numbers) for the upstream: fields 1 (model name) and 2 (version) set to ``name`` and
    ``version``.

    Appended, not re-encoded: a protobuf parser takes the last value of a field that appears
    twice, so the tensors are copied once and never re-serialized.
    """
    return data + _string_field(1, name) + _string_field(2, version)


def _string_field(number: int, value: str) -> bytes:
    raw = value.encode()
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def parameters(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as JSON values."""
    out = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out


def _tensor(tensor: Any, raw: bytes | None) -> dict[str, Any]:
    name = tensor.name
    shape = list(tensor.shape)
    doc: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": shape}
    if tensor.parameters:
        doc["parameters"] = parameters(tensor.parameters)
    if raw is not None:
        doc["data"] = decode(raw, tensor.datatype, shape, name)
        return doc
    field = _TYPED.get(tensor.datatype)
    if field is None:  # FP16/BF16 travel raw only; an unknown type has nothing to read
        doc["data"] = None
        return doc
    typed = getattr(tensor.contents, field)
    count = element_count(shape, name)
    if len(typed) != count:   # checked before a value is copied
        raise TensorError(f"tensor {name!r}: {len(typed)} {tensor.datatype} contents, but "
                          f"shape {shape} holds {count}")
    values = list(typed)
    doc["data"] = [text(v) for v in values] if tensor.datatype == "BYTES" else values
    return doc


def _tensors(tensors: Any, raws: Any, what: str, head: dict[str, Any]) -> list[dict[str, Any]]:
    """The tensors as JSON; TooManyElements (with ``head``) before any is read when they
    hold more elements than the router reads."""
    if raws and len(raws) != len(tensors):
        raise TensorError(f"{len(raws)} raw contents for {len(tensors)} {what}")
    budget = Budget(head)
    for tensor in tensors:
        budget.take(tensor.datatype, element_count(list(tensor.shape), tensor.name))
    return [_tensor(t, raws[i] if raws else None) for i, t in enumerate(tensors)]


def request_json(msg: pb.ModelInferRequest) -> dict[str, Any]:
    """The JSON body of the HTTP request a ModelInferRequest stands for. TensorError when
    a tensor's contents do not match its shape and datatype."""
    doc: dict[str, Any] = {}
    if msg.id:
        doc["id"] = msg.id
    if msg.parameters:
        doc["parameters"] = parameters(msg.parameters)
    doc["inputs"] = _tensors(msg.inputs, msg.raw_input_contents, "inputs", dict(doc))
    if msg.outputs:
        doc["outputs"] = [{"name": o.name, **({"parameters": parameters(o.parameters)}
                                              if o.parameters else {})} for o in msg.outputs]
    return doc


def response_json(msg: pb.ModelInferResponse) -> dict[str, Any]:
    """The JSON answer a ModelInferResponse stands for."""
    doc: dict[str, Any] = {"model_name": msg.model_name, "model_version": msg.model_version}
    if msg.id:
        doc["id"] = msg.id
    if msg.parameters:
        doc["parameters"] = parameters(msg.parameters)
    doc["outputs"] = _tensors(msg.outputs, msg.raw_output_contents, "outputs", dict(doc))
    return doc
