#!/usr/bin/env python3
"""The Python alternative to edgeinfer's `ppocr` and `scrfd`: what a user would run instead.

  * `ppocr`: RapidOCR 1.4.4's own pipeline (`rapidocr_onnxruntime.RapidOCR()`, its defaults: PP-OCRv4
    det + cls + rec on onnxruntime, one session per model, onnxruntime's default threads);
  * `scrfd`: the `scrfd` 0.3.0 package (`SCRFD.from_path(models/scrfd/model.onnx)`, its default
    thresholds), the image decoded with Pillow;
  * one paho-mqtt 2.x client, MQTT v5, subscribed (QoS 1) to `edgeinfer/<device>/models/+/infer`,
    TCP_NODELAY set on its socket once connected (as bench/peer.py);
  * the payload is the image file (Content Type image/jpeg or image/png, as a camera board sends it);
    the reply, JSON `{"model_name","id","outputs":[...]}` with `boxes`/`text` (ppocr) or
    `boxes`/`scores` (scrfd), goes to the Response Topic with the Correlation Data.

Inference runs in paho's network thread, one frame at a time, the straightforward way.

Runs in the venv of models/requirements-fixtures.txt (rapidocr-onnxruntime, the scrfd sdist, and
paho-mqtt 2.1.0): /tmp/fixtures-venv/bin/python bench/peer_detect.py --broker-port P --device D
Prints "ready" on stdout once the subscription is acknowledged.
"""

import argparse
import io
import json
import os
import socket
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--device", required=True)
    args = parser.parse_args()

    from rapidocr_onnxruntime import RapidOCR
    from scrfd import SCRFD

    ocr = RapidOCR()
    faces = SCRFD.from_path(os.path.join(ROOT, "models/scrfd/model.onnx"))

    def answer(model, payload):
        if model == "ppocr":
            result, _ = ocr(payload)
            result = result or []
            boxes = [[min(p[0] for p in box), min(p[1] for p in box), max(p[0] for p in box), max(p[1] for p in box)]
                     for box, _, _ in result]
            return [{"name": "boxes", "datatype": "FP32", "shape": [len(boxes), 4], "data": sum(boxes, [])},
                    {"name": "text", "datatype": "BYTES", "shape": [len(result)], "data": [t for _, t, _ in result]}]
        if model == "scrfd":
            found = faces.detect(Image.open(io.BytesIO(payload)).convert("RGB"))
            boxes = [[f.bbox.upper_left.x, f.bbox.upper_left.y, f.bbox.lower_right.x, f.bbox.lower_right.y]
                     for f in found]
            return [{"name": "boxes", "datatype": "FP32", "shape": [len(boxes), 4], "data": sum(boxes, [])},
                    {"name": "scores", "datatype": "FP32", "shape": [len(found)], "data": [f.probability for f in found]}]
        raise KeyError(model)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    topic = f"edgeinfer/{args.device}/models/+/infer"

    def on_connect(client, userdata, flags, reason, properties):
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        print("ready", flush=True)

    def on_message(client, userdata, message):
        model = message.topic.split("/")[-2]
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None)
        if not reply_to:
            return
        try:
            body = {"model_name": model, "outputs": answer(model, message.payload)}
        except Exception as e:  # a bad frame gets an error, as the daemon does
            body = {"model_name": model, "error": str(e)[:200], "code": "bad_request"}
        out = Properties(PacketTypes.PUBLISH)
        if getattr(props, "CorrelationData", None) is not None:
            out.CorrelationData = props.CorrelationData
        client.publish(reply_to, json.dumps(body), qos=message.qos, properties=out)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.broker_port)
    client.loop_forever()


if __name__ == "__main__":
    sys.exit(main())
