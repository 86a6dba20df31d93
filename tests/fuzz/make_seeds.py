#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into seeds/<target>/, from small
requests, replies, topics and manifests written here and files from tests/fixtures and models/.
The committed corpus/<target>/ is what `cargo fuzz cmin` kept of seeds plus fuzzing (see
bench/fuzz-results.md); rerun this only to start a corpus over. Needs Pillow for the images."""
import io
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(HERE, "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


def binary_request(header, *tensors):
    h = js(header)
    return h, b"".join(tensors)


def bytes_elements(*parts):
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


# --- requests -------------------------------------------------------------------------------------
example = open(os.path.join(ROOT, "models/digits/example-request.json"), "rb").read()
json_requests = {
    "example": example,
    "nested": js({"id": 7, "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]}),
    "params": js({"parameters": {"id": "p", "reply_to": "r/1", "timeout_ms": 50, "binary_data_output": True,
                                 "session": "s1"},
                  "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [-9223372036854775808]}],
                  "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]}),
    "bytes_json": js({"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["h\u00e9", ""]}]}),
    "bool": js({"inputs": [{"name": "b", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]}]}),
    "fp16": js({"inputs": [{"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, 65504]}]}),
    "uint64": js({"inputs": [{"name": "u", "shape": [1], "datatype": "UINT64", "data": [18446744073709551615]}]}),
    "int8": js({"inputs": [{"name": "a", "shape": [2], "datatype": "INT8", "data": [-128, 127]},
                           {"name": "b", "shape": [0], "datatype": "UINT16", "data": []}]}),
    "bad_id": b'{"id":[1],"parameters":{"reply_to":"x/\\u0001"},"inputs":[]}',
}
for name, payload in json_requests.items():
    put("request_json", name, payload)
# JSON header then binary tensors, no header-length property (MQTT 3.1.1 clients).
h, b = binary_request({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 8}}]}, struct.pack("<2f", 1.5, -2))
put("request_json", "trailing_binary", h + b)
h2, b2 = binary_request({"id": "b", "inputs": [
    {"name": "t", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}},
    {"name": "u", "shape": [3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}},
    {"name": "k", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}}]},
    bytes_elements(b"abc", b""), b"\x01\x02\x03", b"\x01")
put("request_json", "trailing_bytes", h2 + b2)

for name, (h, b) in {"fp32": (h, b), "mixed": (h2, b2)}.items():
    put("request_binary", name + "_raw_len", b"\x01" + struct.pack("<H", len(h)) + h + b)
    put("request_binary", name + "_property", b"\x03" + str(len(h)).encode() + b"\n" + h + b)
    put("request_binary", name + "_no_len", b"\x00" + h + b)
put("request_binary", "json_only", b"\x00" + json_requests["params"])
put("request_binary", "property_spaces", b"\x03 0 \n" + b"{}")

# --- BYTES elements ---------------------------------------------------------------------------
put("bytes_elements", "two", bytes([2]) + bytes_elements(b"hello", b""))
put("bytes_elements", "one_in_1xn", bytes([0x41]) + bytes_elements(b"\x00\xff"))
put("bytes_elements", "empty", bytes([0]))
put("bytes_elements", "zero_by_huge", bytes([0x80]))
put("bytes_elements", "truncated_len", bytes([1]) + b"\x05\x00")

# --- replies -----------------------------------------------------------------------------------
reply_json = js({"model_name": "digits", "id": "1", "outputs": [
    {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]})
put("reply", "json", b"\x00" + reply_json)
rh = js({"model_name": "m", "outputs": [
    {"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
    {"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 13}},
    {"name": "i", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
    {"name": "h", "datatype": "FP16", "shape": [1], "parameters": {"binary_data_size": 2}},
    {"name": "j", "datatype": "UINT8", "shape": [1], "data": [3]}]})
rb = struct.pack("<2f", 1.5, -2) + bytes_elements(b"h\xc3\xa9llo", b"") + struct.pack("<q", -8) + b"\x00\x3c"
put("reply", "binary_raw_len", b"\x01" + struct.pack("<H", len(rh)) + rh + rb)
put("reply", "binary_property", b"\x03" + str(len(rh)).encode() + b"\n" + rh + rb)
put("reply", "error", b"\x00" + js({"id": "9", "model_name": "digits", "error": "queue full", "code": "busy"}))

# --- media -------------------------------------------------------------------------------------
pcm = struct.pack("<8h", 0, 1, -1, 32767, -32768, 2, 3, 4)
put("media", "pcm16", b"audio/pcm;format=s16le;rate=16000\nsession=mic\nid=a1\n\n" + pcm)
put("media", "f32", b"audio/pcm; format=\"f32le\"\ntimeout_ms=250\n\n" + struct.pack("<4f", 0.5, -1, 1e-9, 0))
put("media", "image", b"image/png\nid=cam-1\noutputs=labels, scores\n\n\x89PNG\r\n\x1a\n")
put("media", "jpeg", b"IMAGE/JPEG ; q=1\ntimeout_ms=soon\n\n\xff\xd8\xff")
put("media", "other", b"application/json\n\n{}")
vad = open(os.path.join(ROOT, "tests/fixtures/pack/vad/speech.wav"), "rb").read()
put("media", "wav_vad", b"audio/wav\n\n" + vad[:44 + 2 * 600])
import wave
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(2)
    w.setsampwidth(2)
    w.setframerate(8000)
    w.writeframes(struct.pack("<4h", 1, 2, 3, 4))
put("media", "wav_stereo", b"audio/x-wav\n\n" + buf.getvalue())
f32_wav = (b"RIFF" + struct.pack("<I", 4 + 26 + 8 + 8) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHHH", 18, 3, 1, 16000, 64000, 4, 32, 0)
           + b"data" + struct.pack("<I", 8) + struct.pack("<2f", 0.25, -1))
put("media", "wav_f32", b"audio/wave\n\n" + f32_wav)
put("media", "vad_chunk", b"audio/pcm;rate=16000\n\n" + vad[44:44 + 2 * 1024])

# --- images ------------------------------------------------------------------------------------
ocr = os.path.join(ROOT, "tests/fixtures/pack/ocr")
for i, f in enumerate(["00.png", "00.jpg", "01_180.png", "07.jpg"]):
    put("image", f.replace(".", "_"), bytes([i % 3, 47, 191]) + open(os.path.join(ocr, f), "rb").read())
try:
    from PIL import Image
except ImportError:
    sys.exit("Pillow is needed for the image seeds")


def img(mode, size, fmt, **kw):
    im = Image.new(mode, size)
    for x in range(size[0]):
        for y in range(size[1]):
            v = (x * 37 + y * 11) % 256
            im.putpixel((x, y), {"L": v, "LA": (v, 255 - v), "RGB": (v, 255 - v, x % 256), "RGBA": (v, 1, 2, 200),
                                 "I;16": v * 257, "P": v % 16, "1": v % 2, "CMYK": (v, 0, 0, 0)}[mode])
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


small = {
    "gray_png": img("L", (5, 3), "PNG"),
    "gray_alpha_png": img("LA", (3, 5), "PNG"),
    "rgba_png": img("RGBA", (4, 4), "PNG"),
    "palette_png": img("P", (6, 2), "PNG"),
    "bilevel_png": img("1", (9, 3), "PNG"),
    "gray16_png": img("I;16", (3, 3), "PNG"),
    "rgb_png": img("RGB", (8, 8), "PNG"),
    "gray_jpg": img("L", (9, 9), "JPEG", quality=50),
    "progressive_jpg": img("RGB", (17, 9), "JPEG", progressive=True, quality=75),
    "subsampled_jpg": img("RGB", (16, 16), "JPEG", subsampling=2),
    "cmyk_jpg": img("CMYK", (8, 8), "JPEG"),
    "one_pixel_png": img("RGB", (1, 1), "PNG"),
}
for i, (name, data) in enumerate(small.items()):
    put("image", name, bytes([i * 7 % 32, i * 13 % 64, i * 29 % 256]) + data)

# --- model.toml --------------------------------------------------------------------------------
models = os.path.join(ROOT, "models")
for m in sorted(os.listdir(models)):
    p = os.path.join(models, m, "model.toml")
    if os.path.exists(p):
        put("manifest", m, open(p, "rb").read())
put("manifest", "constant_and_serving", """
[[inputs]]
name = "sr"
datatype = "INT64"
shape = [1]
value = [16000]

[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 3, 32, 32]

[serving]
workers = 2
queue_capacity = 8
default_timeout_ms = 100
max_batch_size = 4
max_queue_delay_us = 500

[preprocess]
kind = "image"
input = "x"
resize = "letterbox"
layout = "NCHW"
scale = 1.0
pad_value = 0.5

[postprocess]
kind = "classify"
output = "y"
top_k = 3
""")
put("manifest", "empty", "")

# --- reply topics ------------------------------------------------------------------------------
for i, t in enumerate(["clients/42/reply", "edgeinfer/clients/7/reply", "caf\u00e9/\U0001F600", "x/\u0001",
                       "\u007f", "\u0085", "\ufffe", "\U0010ffff", "a/+/b", "$SYS/x", "edgeinfer/pi4/status", ""]):
    put("reply_topic", f"fixed_{i:02}", b"\x00" + t.encode())
put("reply_topic", "rules", b"\x01base\nok/\nbase/ok/x")
put("reply_topic", "rules_empty_base", b"\x01\n\n/x")
