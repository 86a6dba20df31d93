#!/usr/bin/env python3
"""The Python alternative to edgeinfer: onnxruntime + paho-mqtt, same topics, same payloads.

What a user would write in an afternoon instead of running the daemon:

  * one onnxruntime InferenceSession per model directory (<models>/<name>/model.onnx),
    `intra_op_num_threads` = --threads (default 1), everything else onnxruntime's defaults
    (graph optimisations on, sequential execution);
  * one paho-mqtt 2.x client, MQTT v5, subscribed (QoS 1) to `edgeinfer/<device>/models/+/infer`;
  * requests are Open Inference Protocol JSON (`{"id","inputs":[{"name","shape","datatype","data"}],
    "outputs"?}`, data flat or nested), decoded with numpy;
  * the reply `{"model_name","id","outputs":[{"name","datatype","shape","data"}]}` goes to the MQTT v5
    Response Topic with the request's Correlation Data (or to `parameters.reply_to` for MQTT 3.1.1
    clients, else `edgeinfer/<device>/models/<model>/result`), at the request's QoS (0 or 1);
  * a request that cannot be served is answered `{"id","error","code":"bad_request"}`
    (`unknown_model` for a model that is not loaded).

An image payload (MQTT Content Type image/jpeg or image/png) goes to a model whose model.toml has an
image `[preprocess]`, the way a user would do it: Pillow decodes and resizes it to the input's height
and width (bilinear), numpy scales, subtracts the mean and divides by the std, NCHW float32.
`--threads 0` leaves onnxruntime its default (one thread per core for a lone inference).

Inference runs in paho's network thread, inside on_message, and the reply is published from there:
one request at a time, the straightforward way. The binary tensor extension is not implemented
(such requests get a bad_request reply).

TCP_NODELAY: paho does not set it, so on_connect sets it on `client.socket()` (the connected TCP
socket) with setsockopt(IPPROTO_TCP, TCP_NODELAY, 1). The CONNECT packet and the SUBSCRIBE already
went out before that, which does not matter for the measurements.

Usage: python3 bench/peer.py --broker-port 1883 --device NAME --models models [--threads 1]
Prints "ready" on stdout once the subscription is acknowledged.
"""

import argparse
import io
import json
import os
import signal
import socket
import sys
import tomllib

import numpy as np
from PIL import Image
import onnxruntime as ort
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# OIP datatype -> numpy dtype, and onnxruntime's type string -> OIP datatype.
NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
ORT_TO_OIP = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}
NUMPY_TO_OIP = {np.dtype(v): k for k, v in NUMPY.items()}


class BadRequest(Exception):
    def __init__(self, message, code="bad_request"):
        super().__init__(message)
        self.code = code


class Model:
    def __init__(self, name, path, threads):
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.name = name
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.image = None
        toml = os.path.join(os.path.dirname(path), "model.toml")
        if os.path.isfile(toml):
            with open(toml, "rb") as f:
                pre = tomllib.load(f).get("preprocess") or {}
            if pre.get("kind") == "image":
                self.image = pre

    def infer_image(self, payload):
        pre = self.image
        if pre is None:
            raise BadRequest(f"model {self.name!r} takes no images")
        name = pre["input"]
        _, _, height, width = self.inputs[name].shape
        try:
            image = Image.open(io.BytesIO(payload)).convert("RGB").resize((width, height), Image.BILINEAR)
        except Exception as e:
            raise BadRequest(f"not a readable image: {e}")
        x = np.asarray(image, dtype=np.float32) * pre.get("scale", 1 / 255)
        x = (x - np.asarray(pre.get("mean", [0, 0, 0]), np.float32)) / np.asarray(pre.get("std", [1, 1, 1]), np.float32)
        results = self.session.run(self.outputs, {name: x.transpose(2, 0, 1)[None].astype(np.float32)})
        return [
            {"name": n, "datatype": NUMPY_TO_OIP[r.dtype], "shape": list(r.shape), "data": r.ravel().tolist()}
            for n, r in zip(self.outputs, results)
        ]

    def infer(self, request):
        feeds = {}
        for tensor in request.get("inputs") or []:
            name = tensor.get("name")
            spec = self.inputs.get(name)
            if spec is None:
                raise BadRequest(f"unknown input {name!r}; the model's inputs are {list(self.inputs)}")
            datatype = tensor.get("datatype")
            expected = ORT_TO_OIP.get(spec.type)
            if datatype != expected:
                raise BadRequest(f"input {name!r} must be {expected}, the request sent {datatype}")
            shape = tensor.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
            if len(shape) != len(spec.shape) or any(
                isinstance(m, int) and m != d for m, d in zip(spec.shape, shape)
            ):
                raise BadRequest(f"input {name!r}: shape {shape} does not fit the model's {spec.shape}")
            if "data" not in tensor:
                raise BadRequest(f"input {name!r} has no data")
            try:
                array = np.asarray(tensor["data"], dtype=NUMPY[datatype])
            except (TypeError, ValueError) as e:
                raise BadRequest(f"input {name!r}: data is not {datatype}: {e}")
            if array.size != int(np.prod(shape)):
                raise BadRequest(f"input {name!r}: {array.size} values for shape {shape}")
            feeds[name] = array.reshape(shape)
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise BadRequest(f"missing input(s) {missing}")
        wanted = [o.get("name") for o in request["outputs"]] if request.get("outputs") else self.outputs
        unknown = [n for n in wanted if n not in self.outputs]
        if unknown:
            raise BadRequest(f"unknown output(s) {unknown}; the model's outputs are {self.outputs}")
        results = self.session.run(wanted, feeds)
        return [
            {"name": n, "datatype": NUMPY_TO_OIP[r.dtype], "shape": list(r.shape), "data": r.ravel().tolist()}
            for n, r in zip(wanted, results)
        ]


def load_models(directory, threads):
    models = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name, "model.onnx")
        if os.path.isfile(path):
            try:
                models[name] = Model(name, path, threads)
            except Exception as e:  # one broken model must not stop the others
                print(f"model {name}: {e}", file=sys.stderr)
    return models


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--device", default=socket.gethostname())
    parser.add_argument("--models", default="models")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra_op_num_threads (default 1; 0: onnxruntime's default, every core)")
    args = parser.parse_args()

    models = load_models(args.models, args.threads)
    if not models:
        sys.exit(f"no loadable model in {args.models}")
    prefix = f"edgeinfer/{args.device}/models/"

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"connect refused: {reason_code}", file=sys.stderr)
            return
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(prefix + "+/infer", qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print("ready", flush=True)

    def on_message(client, userdata, msg):
        model_name = msg.topic[len(prefix):].split("/")[0]
        props = msg.properties
        reply_topic = getattr(props, "ResponseTopic", None)
        request_id = None
        try:
            if any(k == "inference-header-content-length" for k, _ in getattr(props, "UserProperty", [])):
                raise BadRequest("the binary tensor extension is not supported")
            image = getattr(props, "ContentType", "") in ("image/jpeg", "image/png")
            request = {}
            if not image:
                try:
                    request = json.loads(msg.payload)
                except ValueError as e:
                    raise BadRequest(f"malformed request JSON: {e}")
                if not isinstance(request, dict):
                    raise BadRequest("the request must be a JSON object")
            parameters = request.get("parameters") or {}
            request_id = request.get("id", parameters.get("id"))
            reply_topic = reply_topic or parameters.get("reply_to")
            model = models.get(model_name)
            if model is None:
                raise BadRequest(f"no model {model_name!r} on this device", "unknown_model")
            outputs = model.infer_image(msg.payload) if image else model.infer(request)
            reply = {"model_name": model_name, "id": request_id, "outputs": outputs}
        except BadRequest as e:
            reply = {"id": request_id, "model_name": model_name, "error": str(e), "code": e.code}
        except Exception as e:  # onnxruntime refused the input: still the client's request
            reply = {"id": request_id, "model_name": model_name, "error": str(e), "code": "bad_request"}
        reply_props = Properties(PacketTypes.PUBLISH)
        correlation = getattr(props, "CorrelationData", None)
        if correlation is not None:
            reply_props.CorrelationData = correlation
        topic = reply_topic or f"{prefix}{model_name}/result"
        client.publish(topic, json.dumps(reply), qos=min(msg.qos, 1), properties=reply_props)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"peer-{args.device}", protocol=mqtt.MQTTv5
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect(args.broker_host, args.broker_port, keepalive=30, clean_start=True)
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        client.disconnect()


if __name__ == "__main__":
    main()
