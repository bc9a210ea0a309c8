"""The V2 binary tensor extension: the readers (router.tensors) against NumPy's own bytes,
and the proxy against tritonclient's HTTP client (binary by default) and loopback models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from helpers import route, url, wait_for, write_config
from tritonclient.utils import InferenceServerException, serialize_byte_tensor
from v2kit import V2Http

from router.analysis.audit import iter_records
from router.tensors import TensorError, binary_json, decode, header_length

# -- the readers ---------------------------------------------------------------------------------

ARRAYS = [
    ("BOOL", np.array([[True, False], [False, True]])),
    ("UINT8", np.array([0, 7, 255], dtype=np.uint8)),
    ("UINT16", np.array([1, 65535], dtype=np.uint16)),
    ("UINT32", np.array([[4_000_000_000]], dtype=np.uint32)),
    ("UINT64", np.array([2**64 - 1, 3], dtype=np.uint64)),
    ("INT8", np.array([-128, 127], dtype=np.int8)),
    ("INT16", np.array([-300, 300], dtype=np.int16)),
    ("INT32", np.array([[-7, 8], [9, -10]], dtype=np.int32)),
    ("INT64", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
    ("FP16", np.array([0.5, -1.25, 65504.0], dtype=np.float16)),
    ("FP32", np.array([[0.1, 2.5, -3.75]], dtype=np.float32)),
    ("FP64", np.array([1e-300, -2.5], dtype=np.float64)),
]


@pytest.mark.parametrize(("datatype", "array"), ARRAYS, ids=[a[0] for a in ARRAYS])
def test_decode_matches_numpy(datatype: str, array: np.ndarray) -> None:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    assert decode(raw, datatype, list(array.shape), "x") == array.flatten().tolist()


def test_decode_bytes_elements() -> None:
    array = np.array([b"US", "ünï".encode(), b"", b"\xff\x00"], dtype=np.object_)
    raw = serialize_byte_tensor(array).item()   # tritonclient's own encoder
    assert decode(raw, "BYTES", [2, 2], "country") == ["US", "ünï", "", "\\xff\x00"]


@pytest.mark.parametrize(("raw", "datatype", "shape", "message"), [
    (b"\0" * 7, "FP32", [2], "'x': 7 bytes, but shape [2] of FP32 needs 8"),
    (b"\0" * 8, "FP32", [3], "needs 12"),
    (b"\0" * 8, "FP32", [-1, 2], "non-negative integers"),
    (b"\0" * 8, "FP32", "2", "non-negative integers"),
    (b"\0" * 2, "COMPLEX", [1], "unknown datatype 'COMPLEX'"),
    (b"\x05\0\0\0ab", "BYTES", [1], "runs past the tensor's end"),
    (b"\x01\0", "BYTES", [1], "length is cut off"),
    (b"\x01\0\0\0a\x01\0\0\0b", "BYTES", [1], "more BYTES elements than its shape holds"),
    (b"\x01\0\0\0a", "BYTES", [2], "1 BYTES elements, but its shape holds 2"),
    (b"\0" * 3, "BF16", [2], "3 bytes, but shape [2] of BF16 needs 4"),
])
def test_decode_refuses_sizes_that_do_not_add_up(raw: bytes, datatype: str, shape: object,
                                                 message: str) -> None:
    with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode(raw, datatype, shape, "x")


def test_bf16_passes_undecoded() -> None:
    assert decode(b"\0" * 4, "BF16", [2], "x") is None


def _body(inputs: list[tuple[dict, bytes | None]], extra: bytes = b"") -> tuple[bytes, int]:
    tensors, raws = [], []
    for tensor, raw in inputs:
        if raw is not None:
            tensor = {**tensor, "parameters": {"binary_data_size": len(raw)}}
            raws.append(raw)
        tensors.append(tensor)
    header = orjson.dumps({"id": "r1", "inputs": tensors})
    return header + b"".join(raws) + extra, len(header)


def test_binary_json_mixes_json_and_binary_inputs_in_order() -> None:
    body, size = _body([
        ({"name": "a", "datatype": "FP32", "shape": [2]}, np.array([1, 2], "<f4").tobytes()),
        ({"name": "b", "datatype": "INT64", "shape": [1], "data": [5]}, None),
        ({"name": "c", "datatype": "INT32", "shape": [1]}, np.array([9], "<i4").tobytes()),
    ])
    doc = binary_json(body, size, "inputs")
    assert doc == {"id": "r1", "binary": True, "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
        {"name": "b", "datatype": "INT64", "shape": [1], "data": [5]},
        {"name": "c", "datatype": "INT32", "shape": [1], "data": [9]}]}


@pytest.mark.parametrize(("extra", "size_change", "message"), [
    (b"\0", 0, "1 bytes follow the last binary tensor"),
    (b"", -3, "is not JSON"),
])
def test_binary_json_refuses_bodies_that_do_not_add_up(extra: bytes, size_change: int,
                                                       message: str) -> None:
    body, size = _body([({"name": "a", "datatype": "FP32", "shape": [1]},
                         np.array([1], "<f4").tobytes())], extra)
    with pytest.raises(TensorError, match=message):
        binary_json(body, size + size_change, "inputs")


def test_binary_data_size_past_the_end_names_the_input() -> None:
    header = orjson.dumps({"inputs": [{"name": "amount", "datatype": "FP32", "shape": [1],
                                       "parameters": {"binary_data_size": 400}}]})
    with pytest.raises(TensorError, match="'amount': binary_data_size 400 runs past"):
        binary_json(header + b"\0" * 4, len(header), "inputs")


@pytest.mark.parametrize(("value", "message"), [
    ("x", "not a decimal integer"), ("-1", "not a decimal integer"),
    ("+4", "not a decimal integer"), (" 4 ", "not a decimal integer"),
    ("\u0664", "not a decimal integer"), ("99", "outside")])
def test_header_length_must_lie_within_the_body(value: str, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        header_length(value, 10)


# -- through the router, with tritonclient ----------------------------------------------------

def _inputs(amount: float, country: str = "US") -> list[th.InferInput]:
    """A fraud-features@1 row as four named tensors, binary (tritonclient's default)."""
    values = [("amount", "FP32", np.array([amount], np.float32)),
              ("avg_purchase_last_7_days", "FP64", np.array([30.5], np.float64)),
              ("country", "BYTES", np.array([country.encode()], np.object_)),
              ("is_new_user", "BOOL", np.array([True]))]
    out = []
    for name, datatype, array in values:
        tensor = th.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(array)   # binary_data=True
        out.append(tensor)
    return out


async def _v2_router(tmp_path: Path, upstreams, start_router, chunked: bool = False,
                     top: dict | None = None, **changes):
    model = V2Http("1.0.0", chunked=chunked)
    base = await upstreams.start(model.app())
    cfg = route({"v1": base + "/v2/models/fraud"},
                **{"input_schema": "fraud-features@1", "validation": "enforce", **changes})
    app = await start_router(write_config(tmp_path, [cfg], **(top or {})))
    return app, model, base


@pytest.mark.parametrize("chunked", [False, True], ids=["buffered", "streamed"])
async def test_tritonclient_binary_through_the_router(tmp_path: Path, upstreams, start_router,
                                                      chunked: bool) -> None:
    app, model, base = await _v2_router(tmp_path, upstreams, start_router, chunked=chunked)
    outputs = [th.InferRequestedOutput("score", binary_data=True)]
    direct = tha.InferenceServerClient(base.removeprefix("http://"))
    routed = tha.InferenceServerClient(f"127.0.0.1:{app.port}")
    try:
        want = await direct.infer("fraud", _inputs(12.5), outputs=outputs, request_id="d-1")
        got = await routed.infer("fraud", _inputs(12.5), outputs=outputs,
                                 request_id="trace-me-7")
    finally:
        await direct.close()
        await routed.close()
    assert got.as_numpy("score").tolist() == want.as_numpy("score").tolist() == [12.5]
    # Forwarded byte for byte: the model saw the same body either way (the id aside).
    assert model.seen[1]["bytes"] == model.seen[0]["bytes"] + len("trace-me-7") - len("d-1")
    assert model.seen[1]["headers"]["x-request-id"] == "trace-me-7"
    await app.predlog.flush()
    (record,) = [r for r in iter_records(tmp_path / "logs") if r["request_id"] == "trace-me-7"]
    assert record["status"] == 200 and record["served_model_version"] == "1.0.0"
    assert record["input"]["binary"] is True
    by_name = {t["name"]: t for t in record["input"]["inputs"]}
    assert by_name["amount"] == {"name": "amount", "datatype": "FP32", "shape": [1],
                                 "data": [12.5]}
    assert by_name["country"]["data"] == ["US"] and by_name["is_new_user"]["data"] == [True]
    assert record["output"]["binary"] is True
    assert record["output"]["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [1],
                                            "data": [12.5]}]


async def test_binary_input_is_validated(tmp_path: Path, upstreams, start_router) -> None:
    app, model, _ = await _v2_router(tmp_path, upstreams, start_router)
    routed = tha.InferenceServerClient(f"127.0.0.1:{app.port}")
    try:
        with pytest.raises(InferenceServerException) as caught:
            await routed.infer("fraud", _inputs(-4.0, country="XX"), request_id="bad-row")
    finally:
        await routed.close()
    assert "2 violation(s) of schema fraud-features@1" in str(caught.value)
    assert model.seen == []
    await app.predlog.flush()
    (record,) = [r for r in iter_records(tmp_path / "logs") if r["request_id"] == "bad-row"]
    assert record["status"] == 422
    assert {(v["field"], v["kind"]) for v in record["violations"]} == {
        ("amount", "min"), ("country", "enum")}


async def test_malformed_binary_body_is_400_naming_the_input(tmp_path: Path, upstreams,
                                                             start_router, client) -> None:
    app, model, _ = await _v2_router(tmp_path, upstreams, start_router, validation="log")
    header = orjson.dumps({"inputs": [{"name": "amount", "datatype": "FP32", "shape": [2],
                                       "parameters": {"binary_data_size": 4}}]})
    async with client.post(url(app, "/v2/models/fraud/infer"), data=header + b"\0" * 4,
                           headers={"Inference-Header-Content-Length": str(len(header))}
                           ) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["code"] == "bad_request"
    assert "'amount': 4 bytes, but shape [2] of FP32 needs 8" in body["error"]
    assert model.seen == []


async def test_v2_body_id_is_the_request_id(tmp_path: Path, upstreams, start_router,
                                            client) -> None:
    app, model, _ = await _v2_router(tmp_path, upstreams, start_router, validation="log")
    doc = {"id": "client-id-1", "inputs": [
        {"name": "amount", "datatype": "FP64", "shape": [1], "data": [3.0]}]}
    async with client.post(url(app, "/v2/models/fraud/infer"), data=orjson.dumps(doc)) as resp:
        assert resp.status == 200
        assert resp.headers["x-request-id"] == "client-id-1"
    async with client.post(url(app, "/v2/models/fraud/infer"), data=orjson.dumps(doc),
                           headers={"x-request-id": "header-wins"}) as resp:
        assert resp.headers["x-request-id"] == "header-wins"
    bad = {**doc, "id": "spaces are not visible ascii\n"}
    async with client.post(url(app, "/v2/models/fraud/infer"), data=orjson.dumps(bad)) as resp:
        assert len(resp.headers["x-request-id"]) == 32   # generated
    assert [s["headers"]["x-request-id"] for s in model.seen][:2] == ["client-id-1",
                                                                      "header-wins"]


async def test_binary_answers_are_compared_with_a_binary_shadow(tmp_path: Path, upstreams,
                                                                start_router) -> None:
    primary, shadow = V2Http("1.0.0"), V2Http("3.0.0")
    p_base, s_base = await upstreams.start(primary.app()), await upstreams.start(shadow.app())
    cfg = route({"v1": p_base + "/v2/models/fraud", "v3": s_base + "/v2/models/fraud"},
                shadow=[{"version": "v3", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    routed = tha.InferenceServerClient(f"127.0.0.1:{app.port}")
    try:
        await routed.infer("fraud", _inputs(7.0), request_id="shadowed",
                           outputs=[th.InferRequestedOutput("score", binary_data=True)])
    finally:
        await routed.close()
    await wait_for(lambda: len(shadow.seen) == 1 and not app.shadows.tasks)
    # The copy went byte for byte, binary header and all.
    assert shadow.seen[0]["bytes"] == primary.seen[0]["bytes"]
    assert shadow.seen[0]["headers"]["inference-header-content-length"] == \
        primary.seen[0]["headers"]["inference-header-content-length"]
    await app.predlog.flush()
    records = {r["role"]: r for r in iter_records(tmp_path / "logs")
               if r["request_id"] == "shadowed"}
    assert records["shadow"]["compare"]["match"] is True
    assert records["shadow"]["compare"]["max_abs_diff"] == 0.0
    assert records["shadow"]["output"]["outputs"][0]["data"] == [7.0]
    assert records["shadow"]["input"]["binary"] is True


# -- what an independent red-team pass found, each kept fixed by a test -----------------------

def test_bytes_elements_past_the_shape_stop_at_once() -> None:
    """A shape of 1 with a million empty BYTES elements: refused at the second, not after
    reading them all (that held the event loop for seconds)."""
    raw = b"\0\0\0\0" * 1_000_000
    with pytest.raises(TensorError, match=r"more BYTES elements than its shape holds \(1\)"):
        decode(raw, "BYTES", [1], "s")


def test_too_many_elements_are_counted_before_any_is_read() -> None:
    from router.tensors import MAX_BYTES_ELEMENTS, MAX_ELEMENTS, TooManyElements

    for datatype, count, raw in (("BOOL", MAX_ELEMENTS + 1, b"\0" * (MAX_ELEMENTS + 1)),
                                 ("BYTES", MAX_BYTES_ELEMENTS + 1,
                                  b"\0\0\0\0" * (MAX_BYTES_ELEMENTS + 1))):
        body, size = _body([({"id_": 1, "name": "t", "datatype": datatype,
                              "shape": [count]}, raw)])
        with pytest.raises(TooManyElements) as caught:
            binary_json(body, size, "inputs")
        assert caught.value.count == count
        assert "data" not in caught.value.doc["inputs"][0]   # nothing was read


async def test_compressed_binary_requests_are_read(tmp_path: Path, upstreams,
                                                   start_router) -> None:
    """tritonclient's request_compression_algorithm: the router inflates to read (and
    validate) the body, and forwards the compressed bytes as they came."""
    app, model, _ = await _v2_router(tmp_path, upstreams, start_router)
    routed = tha.InferenceServerClient(f"127.0.0.1:{app.port}")
    try:
        for algorithm in ("gzip", "deflate"):
            with pytest.raises(InferenceServerException) as caught:
                await routed.infer("fraud", _inputs(-1.0), request_id=f"bad-{algorithm}",
                                   request_compression_algorithm=algorithm)
            assert "violation(s) of schema" in str(caught.value)
    finally:
        await routed.close()
    assert model.seen == []      # refused: the router read the compressed body
    await app.predlog.flush()
    records = {r["request_id"]: r for r in iter_records(tmp_path / "logs")}
    assert records["bad-gzip"]["input"]["inputs"][0]["data"] == [-1.0]
    assert records["bad-deflate"]["status"] == 422


async def test_bodies_that_cannot_be_read(tmp_path: Path, upstreams, start_router,
                                          client) -> None:
    import gzip

    app, model, _ = await _v2_router(tmp_path, upstreams, start_router,
                                     top={"limits": {"max_body_mb": 1}})
    bomb = gzip.compress(b"[" * (4 << 20))            # 4 MB inflated from a few KB
    async with client.post(url(app, "/v2/models/fraud/infer"), data=bomb,
                           headers={"content-encoding": "gzip"}) as resp:
        assert resp.status == 413
        assert "once inflated" in (await resp.json())["error"]
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"\x1b\x00",
                           headers={"content-encoding": "br"}) as resp:
        assert resp.status == 400
        assert "content-encoding 'br' is not gzip or deflate" in (await resp.json())["error"]
    assert model.seen == []


@pytest.mark.parametrize("validation", ["enforce", "log"])
async def test_binary_tensors_past_what_the_router_reads(tmp_path: Path, upstreams,
                                                         start_router, client,
                                                         validation: str) -> None:
    from router.tensors import MAX_ELEMENTS

    app, model, _ = await _v2_router(tmp_path, upstreams, start_router,
                                     validation=validation)
    raw = np.ones(MAX_ELEMENTS + 1, np.float32).tobytes()
    header = orjson.dumps({"id": "wide-1", "inputs": [
        {"name": "amount", "datatype": "FP32", "shape": [MAX_ELEMENTS + 1],
         "parameters": {"binary_data_size": len(raw)}}]})
    async with client.post(url(app, "/v2/models/fraud/infer"), data=header + raw,
                           headers={"Inference-Header-Content-Length": str(len(header))}
                           ) as resp:
        assert resp.headers["x-request-id"] == "wide-1"
        status = resp.status
    # A streamed answer reaches the client before the request's record is handed over.
    await wait_for(lambda: app.proxy.inflight == 0)
    await asyncio.sleep(0)
    await app.predlog.flush()
    (record,) = [r for r in iter_records(tmp_path / "logs") if r["request_id"] == "wide-1"]
    if validation == "enforce":
        assert status == 413 and model.seen == []
    else:
        assert status == 200 and model.seen[0]["bytes"] == len(header) + len(raw)
        assert record["input"]["_unread"] is True and record["input"]["binary"] is True
        assert record["violations"][0]["kind"] == "format"
