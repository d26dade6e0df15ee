"""Clients for TF Serving (gRPC ``PredictionService`` and REST ``:predict``) and a local server.

Real deployments run the official ``tensorflow/serving`` container (see BUILD.md). The local
servers here load an exported SavedModel and answer the same gRPC and REST requests, for tests
and development on machines without TF Serving.

REST format (TF Serving's "row" format)::

    POST /v1/models/<model_name>:predict
    {"signature_name": "serving_waveform", "instances": [{"audio": [0.0, 0.1, ...]}]}
    -> {"predictions": [{"probabilities": [...], "top_k_tags": [...],
                         "top_k_probabilities": [...], "tags": [...]}]}
"""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent import futures
from typing import Sequence

import numpy as np

INPUT_NAMES = {"serving_default": "mel", "serving_example": "examples", "serving_waveform": "audio",
               "serving_window": "mel", "serving_track": "audio"}
OUTPUTS = ("probabilities", "top_k_tags", "top_k_probabilities", "tags")


def rest_request(inputs: Sequence, signature: str = "serving_waveform") -> dict:
    """The JSON body of a REST predict request for a batch of inputs."""
    name = INPUT_NAMES[signature]
    return {"signature_name": signature,
            "instances": [{name: np.asarray(x).tolist()} for x in inputs]}


def parse_rest_response(body: dict) -> list[dict]:
    """Predictions of a REST response, one dict of numpy arrays per instance."""
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    return [{k: np.asarray(v) for k, v in row.items()} for row in body["predictions"]]


class RestClient:
    """``POST http://<server>/v1/models/<model_name>[/versions/<v>]:predict``."""

    def __init__(self, server: str, model_name: str, version: int | None = None,
                 timeout: float = 60.0):
        path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
        self.url = f"http://{server}{path}:predict"
        self.timeout = timeout

    def predict(self, inputs: Sequence, signature: str = "serving_waveform") -> list[dict]:
        body = json.dumps(rest_request(inputs, signature)).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return parse_rest_response(json.loads(response.read()))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.url}: HTTP {e.code}: {e.read().decode()[:500]}") from None


class GrpcClient:
    """TF Serving's ``PredictionService.Predict`` over gRPC."""

    def __init__(self, server: str, model_name: str, version: int | None = None,
                 timeout: float = 60.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(
            server, options=[("grpc.max_send_message_length", 64 << 20),
                             ("grpc.max_receive_message_length", 64 << 20)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.version, self.timeout = model_name, version, timeout

    def predict(self, inputs, signature: str = "serving_waveform") -> dict:
        """Outputs of one batched request: {name: numpy array}."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version:
            request.model_spec.version.value = self.version
        dtype = tf.string if signature == "serving_example" else tf.float32
        request.inputs[INPUT_NAMES[signature]].CopyFrom(tf.make_tensor_proto(inputs, dtype=dtype))
        response = self.stub.Predict(request, timeout=self.timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def close(self) -> None:
        self.channel.close()


class LocalServer:
    """A gRPC PredictionService and a REST endpoint over one exported SavedModel (tests/dev).

    Args:
      version_dir: ``export/<model_name>/<version>``.
      model_name: the name clients ask for.
    """

    def __init__(self, version_dir: str, model_name: str, host: str = "127.0.0.1"):
        import tensorflow as tf

        self.model = tf.saved_model.load(version_dir)
        self.model_name = model_name
        self.host = host
        self._grpc = None
        self._http = None

    def _run(self, signature: str, value) -> dict:
        import tensorflow as tf

        if signature not in INPUT_NAMES:
            raise ValueError(f"unknown signature {signature!r}; known: {', '.join(INPUT_NAMES)}")
        fn = self.model.signatures[signature]
        return {k: v.numpy() for k, v in fn(**{INPUT_NAMES[signature]: tf.constant(value)}).items()}

    def start_grpc(self, port: int = 0) -> int:
        """Starts the gRPC server; returns its port."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        server_self = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802  (gRPC method name)
                if request.model_spec.name != server_self.model_name:
                    context.abort(grpc.StatusCode.NOT_FOUND,
                                  f"Servable not found for request: {request.model_spec.name}")
                signature = request.model_spec.signature_name or "serving_default"
                try:
                    (name, proto), = request.inputs.items()
                    outputs = server_self._run(signature, tf.make_ndarray(proto))
                except Exception as e:  # noqa: BLE001  reported to the client as INVALID_ARGUMENT
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:2000])
                response = predict_pb2.PredictResponse()
                response.model_spec.name = server_self.model_name
                response.model_spec.signature_name = signature
                for k, v in outputs.items():
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
                return response

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), self._grpc)
        port = self._grpc.add_insecure_port(f"{self.host}:{port}")
        self._grpc.start()
        return port

    def start_rest(self, port: int = 0) -> int:
        """Starts the REST server (``/v1/models/<name>:predict``); returns its port."""
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body: dict):
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = f"/v1/models/{server_self.model_name}"
                if not (self.path.startswith(expected) and self.path.endswith(":predict")):
                    return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
                try:
                    body = json.loads(raw)
                    signature = body.get("signature_name", "serving_default")
                    name = INPUT_NAMES[signature]
                    value = np.asarray([row[name] for row in body["instances"]],
                                       dtype=object if signature == "serving_example" else np.float32)
                    outputs = server_self._run(signature, value)
                except Exception as e:  # noqa: BLE001
                    return self._reply(400, {"error": str(e)[:2000]})
                n = len(next(iter(outputs.values())))
                rows = [{k: _jsonable(v[i]) for k, v in outputs.items()} for i in range(n)]
                return self._reply(200, {"predictions": rows})

        self._http = ThreadingHTTPServer((self.host, port), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self._http.server_address[1]

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def _jsonable(value):
    value = np.asarray(value)
    if value.dtype.kind in ("S", "O"):
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    return value.tolist()
