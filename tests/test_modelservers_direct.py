"""tritonclient straight at real model servers (no router): what MLServer 1.7.1 and KServe
0.21 each do with the Open Inference Protocol requests a client sends by default.

The servers come from tests/modelservers.py (own venvs, a scikit-learn classifier named
``classifier``, 127.0.0.1 only). Where a server refuses or bends something, the test asserts
the observed behaviour, so a change in a server version shows up here first.
"""

from __future__ import annotations

import numpy as np
import pytest
from modelservers import ModelServer, kserve_server, mlserver  # noqa: F401 - fixtures

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2, service_pb2_grpc = grpcclient.service_pb2, grpcclient.service_pb2_grpc
InferenceServerException = httpclient.InferenceServerException

pytestmark = [pytest.mark.modelservers, pytest.mark.slow, pytest.mark.loopback]


def features(server: ModelServer) -> np.ndarray:
    rows = np.array(server.rows, dtype=np.float32)
    assert rows.shape == (len(server.expected), 4)
    return rows


def http_input(server: ModelServer, binary: bool) -> object:
    rows = features(server)
    tensor = httpclient.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def grpc_input(server: ModelServer) -> object:
    rows = features(server)
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # gRPC: always raw_input_contents in tritonclient
    return tensor


@pytest.fixture
def http():
    clients = []

    def connect(server: ModelServer):
        client = httpclient.InferenceServerClient(server.http, connection_timeout=10,
                                                  network_timeout=30)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def grpc_client():
    clients = []

    def connect(server: ModelServer):
        client = grpcclient.InferenceServerClient(server.grpc)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def test_servers_listen_on_loopback_only(mlserver: ModelServer,  # noqa: F811
                                         kserve_server: ModelServer) -> None:  # noqa: F811
    for server in (mlserver, kserve_server):
        ports = {int(server.http.rsplit(":", 1)[1]), int(server.grpc.rsplit(":", 1)[1])}
        if server.listening:  # empty where /proc/net is unavailable
            # Exactly the two ports (MLServer: metrics server off), all on 127.0.0.1 (gRPC
            # listens on AF_INET6 sockets as ::ffff:127.0.0.1, counted as 127.0.0.1).
            assert server.listening == sorted(("127.0.0.1", p) for p in ports), server.kind
        assert server.model == "classifier"
        # The synthetic data gives all three classes among the sample rows.
        assert sorted(set(server.expected)) == [0, 1, 2]


# --- HTTP, tritonclient defaults: binary input, no outputs named (binary_data_output=true) ---


def test_http_default_binary_kserve(http, kserve_server: ModelServer) -> None:  # noqa: F811
    result = http(kserve_server).infer("classifier", [http_input(kserve_server, True)],
                                       request_id="req-1")
    n = len(kserve_server.expected)
    assert result.as_numpy("predict").tolist() == kserve_server.expected
    # The answer is binary too: the JSON header carries no data, only binary_data_size.
    assert result.get_response() == {
        "id": "req-1", "model_name": "classifier", "model_version": None,
        "outputs": [{"name": "predict", "shape": [n], "datatype": "INT64",
                     "parameters": {"binary_data_size": 8 * n}}],
    }


def test_http_default_binary_mlserver_is_refused(http, mlserver: ModelServer) -> None:  # noqa: F811
    # MLServer 1.7.1 parses every /infer body as JSON: the binary tail after the JSON header
    # fails with 422 json_invalid (it has no Inference-Header-Content-Length support).
    with pytest.raises(InferenceServerException) as refused:
        http(mlserver).infer("classifier", [http_input(mlserver, True)], request_id="req-1")
    assert refused.value.status() == "422"
    assert "json_invalid" in str(refused.value)
    assert "JSON decode error" in str(refused.value)


# --- HTTP, JSON (binary_data=False) ---


def test_http_json_mlserver(http, mlserver: ModelServer) -> None:  # noqa: F811
    client = http(mlserver)
    n = len(mlserver.expected)
    expected_response = {
        "model_name": "classifier", "id": "req-2", "parameters": {},  # no model_version key
        "outputs": [{"name": "predict", "shape": [n, 1], "datatype": "INT64",
                     "parameters": {"content_type": "np"}, "data": mlserver.expected}],
    }
    # JSON in, no output named (tritonclient then asks binary_data_output=true), an output
    # asked as JSON, an output asked as binary: MLServer answers JSON "data" every time.
    for outputs in (None, [httpclient.InferRequestedOutput("predict", binary_data=False)],
                    [httpclient.InferRequestedOutput("predict", binary_data=True)]):
        result = client.infer("classifier", [http_input(mlserver, False)], request_id="req-2",
                              outputs=outputs)
        assert result.get_response() == expected_response
        # The classes come back as a column, shape [n, 1] (MLServer's NumpyCodec).
        assert result.as_numpy("predict").shape == (n, 1)
        assert result.as_numpy("predict").ravel().tolist() == mlserver.expected
    # Without a request id MLServer makes one up (a UUID).
    result = client.infer("classifier", [http_input(mlserver, False)])
    assert len(result.get_response()["id"]) == 36


def test_http_json_kserve(http, kserve_server: ModelServer) -> None:  # noqa: F811
    client = http(kserve_server)
    n = len(kserve_server.expected)
    # tritonclient sends a JSON-only request without a Content-Type header. FastAPI (0.165
    # in the kserve venv: strict_content_type) then hands KServe the body as bytes, and
    # KServe 0.21 wants Inference-Header-Content-Length for a bytes body: 400.
    with pytest.raises(InferenceServerException) as refused:
        client.infer("classifier", [http_input(kserve_server, False)], request_id="req-2")
    assert refused.value.status() == "400"
    assert "inference-header-content-length" in str(refused.value)
    # With Content-Type: application/json the same request is read as JSON.
    json_type = {"Content-Type": "application/json"}
    result = client.infer("classifier", [http_input(kserve_server, False)], request_id="req-2",
                          headers=json_type,
                          outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)])
    assert result.get_response() == {
        "model_name": "classifier", "model_version": None, "id": "req-2", "parameters": None,
        "outputs": [{"name": "predict", "shape": [n], "datatype": "INT64", "parameters": None,
                     "data": kserve_server.expected}],
    }
    assert result.as_numpy("predict").tolist() == kserve_server.expected
    # JSON in, no output named (binary_data_output=true): KServe answers binary.
    result = client.infer("classifier", [http_input(kserve_server, False)], request_id="req-3",
                          headers=json_type)
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": 8 * n}
    assert result.as_numpy("predict").tolist() == kserve_server.expected


# --- gRPC ---


@pytest.mark.parametrize("name", ["mlserver", "kserve_server"])
def test_grpc_raw_in_raw_out(grpc_client, request: pytest.FixtureRequest, name: str) -> None:
    server: ModelServer = request.getfixturevalue(name)
    n = len(server.expected)
    client = grpc_client(server)
    result = client.infer("classifier", [grpc_input(server)], request_id="req-4")
    response = result.get_response()
    # Raw inputs in (tritonclient's only way): both answer raw_output_contents, which
    # tritonclient's as_numpy reads; no typed contents.
    assert len(response.raw_output_contents) == 1
    assert response.outputs[0].contents.ByteSize() == 0
    assert (response.id, response.model_name, response.model_version) == \
        ("req-4", "classifier", "")
    assert response.outputs[0].name == "predict"
    assert response.outputs[0].datatype == "INT64"
    classes = result.as_numpy("predict")
    if name == "mlserver":
        assert list(response.outputs[0].shape) == [n, 1]
        assert response.outputs[0].parameters["content_type"].string_param == "np"
    else:
        assert list(response.outputs[0].shape) == [n]
        assert response.outputs[0].parameters["binary_data_size"].int64_param == 8 * n
    assert classes.shape == tuple(response.outputs[0].shape)
    assert classes.ravel().tolist() == server.expected
    if name == "mlserver":
        # No request id: MLServer's gRPC answer has an empty id (its HTTP side makes one up).
        assert client.infer("classifier", [grpc_input(server)]).get_response().id == ""


@pytest.mark.parametrize("name", ["mlserver", "kserve_server"])
def test_grpc_typed_in_typed_out(request: pytest.FixtureRequest, name: str) -> None:
    # A typed-contents request (fp32_contents, as KServe's or grpcurl clients send), built
    # with tritonclient's own protobuf stubs since its InferInput always sends raw.
    import grpc

    server: ModelServer = request.getfixturevalue(name)
    n = len(server.expected)
    rows = features(server)
    message = service_pb2.ModelInferRequest(model_name="classifier", id="req-5")
    tensor = message.inputs.add(name="input-0", datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    with grpc.insecure_channel(server.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message,
                                                                                 timeout=30)
    # Both servers answer in kind: typed int64_contents, no raw_output_contents.
    assert len(response.raw_output_contents) == 0
    assert list(response.outputs[0].contents.int64_contents) == server.expected
    assert response.id == "req-5"
    assert list(response.outputs[0].shape) == ([n, 1] if name == "mlserver" else [n])
    # tritonclient's InferResult.as_numpy reads raw contents (or bytes_contents) only: on
    # typed numeric contents it finds no data and fails reshaping an empty array.
    with pytest.raises(ValueError, match="cannot reshape array of size 0"):
        grpcclient.InferResult(response).as_numpy("predict")
