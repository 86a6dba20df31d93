#!/usr/bin/env python3
"""A first look at int8 in tract (issue 11 item 5): where tract's int8 path loses, before any
offline preparation is built on it.

For a pack model (random-weight copy from models/fetch.py, so the numbers are a speed test):
upgrade the graph to opset 13 (per-channel quantization needs it), quantize it statically with
onnxruntime's quantizer (uint8 activations, int8 per-channel weights, calibrated on 16 frames of
random normal values made here) in two forms, QDQ (QuantizeLinear/DequantizeLinear pairs around
float ops) and QOperator with only Conv quantized (QLinearConv; tract has no QLinearConcat), then
time f32 and both int8 forms on one thread in onnxruntime and in tract (`edgeinfer bench
--profile`, whose top operators say where the time goes).

Usage: python3 bench/int8_probe.py [--model squeezenet] [--seconds 3] [--edgeinfer PATH]
Prints markdown. Accuracy is not measured here (random weights): that is the real item 5's job.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from operators import ROOT, find_edgeinfer


def data_input(model):
    initializers = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in initializers)


def prepare(src, directory):
    """The f32 model at opset 13, and its two int8 forms; returns {form: path} and the input."""
    model = version_converter.convert_version(onnx.load(src), 13)
    inp = data_input(model)
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    paths = {"f32": os.path.join(directory, "f32.onnx")}
    onnx.save(model, paths["f32"])

    class Frames(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.frames = iter([{inp.name: rng.normal(0, 1, shape).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.frames, None)

    for form, fmt, ops in [("int8 QDQ", QuantFormat.QDQ, None), ("int8 QLinearConv", QuantFormat.QOperator, ["Conv"])]:
        paths[form] = os.path.join(directory, form.replace(" ", "_") + ".onnx")
        quantize_static(paths["f32"], paths[form], Frames(), quant_format=fmt, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=ops)
    return paths, inp.name, shape


def ort_ms(path, name, shape, seconds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = {name: np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)}
    session.run(None, x)
    runs, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        session.run(None, x)
        runs += 1
    return (time.perf_counter() - begin) * 1e3 / runs


def tract_profile(edgeinfer, path, name, shape, seconds):
    with tempfile.TemporaryDirectory() as repo:
        os.makedirs(os.path.join(repo, "m"))
        os.symlink(path, os.path.join(repo, "m", "model.onnx"))
        with open(os.path.join(repo, "m", "model.toml"), "w") as toml:
            toml.write(f'[[inputs]]\nname = "{name}"\ndatatype = "FP32"\nshape = {list(shape)}\n')
        out = subprocess.run([edgeinfer, "bench", "m", "--models", repo, "--profile", "--json", "--seconds", str(seconds)],
                             capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1][:200]
    result = json.loads(out.stdout)
    top = ", ".join(f"{o['op']} {o['ms_per_run']:.1f}" for o in result["operators"][:4])
    return result["ms_per_run"], top


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="squeezenet", help="a random-weight pack model (target/pack-random/MODEL)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--edgeinfer")
    args = parser.parse_args()
    edgeinfer = find_edgeinfer(args.edgeinfer)
    src = os.path.join(ROOT, "target/pack-random", args.model, "model.onnx")
    print(f"{args.model} (random weights), edgeinfer `{edgeinfer}`, onnxruntime {ort.__version__}, one thread\n")
    print("| form | onnxruntime ms | tract ms | tract's top operators (ms per run) |")
    print("|---|--:|--:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        paths, name, shape = prepare(src, tmp)
        for form, path in paths.items():
            tract, top = tract_profile(edgeinfer, path, name, shape, args.seconds)
            tract_cell = f"{tract:.2f}" if tract is not None else "does not load"
            print(f"| {form} | {ort_ms(path, name, shape, args.seconds):.2f} | {tract_cell} | {top} |")


if __name__ == "__main__":
    main()
