#!/usr/bin/env python3
"""A minimal reproduction for tract upstream: one ONNX MaxPool, tract against onnxruntime.

bench/operators.py found squeezenet's three MaxPools (kernel 3, stride 2, no padding) taking a fifth
of tract's inference time, about 30 times what onnxruntime spends on them. This script builds a
graph of that one operator at each of squeezenet's three shapes, times it in tract
(`edgeinfer bench --profile`, one thread: the per-node time of tract's plan) and in onnxruntime
(one thread), and prints a markdown table. Nothing but the operator is in the graph.

Usage: python3 bench/maxpool.py [--seconds 2] [--edgeinfer PATH]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from operators import find_edgeinfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# squeezenet's MaxPool inputs (models/squeezenet: the onnx package's light model).
SHAPES = [(1, 64, 111, 111), (1, 128, 55, 55), (1, 256, 27, 27)]


def write_model(directory, shape):
    """A repository with one model: x -> MaxPool(3x3, stride 2) -> y."""
    out_hw = [(d - 3) // 2 + 1 for d in shape[2:]]
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])
    graph = helper.make_graph([node], "maxpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], shape[1], *out_hw])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    os.makedirs(os.path.join(directory, "maxpool"))
    path = os.path.join(directory, "maxpool", "model.onnx")
    onnx.save(model, path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--edgeinfer")
    args = parser.parse_args()
    edgeinfer = find_edgeinfer(args.edgeinfer)
    print(f"edgeinfer `{edgeinfer}`, onnxruntime {ort.__version__}, one thread each, {args.seconds} s per case\n")
    print("| input | tract ms | onnxruntime ms | tract / onnxruntime |")
    print("|---|--:|--:|--:|")
    for shape in SHAPES:
        with tempfile.TemporaryDirectory() as tmp:
            path = write_model(tmp, shape)
            out = subprocess.run([edgeinfer, "bench", "maxpool", "--models", tmp, "--profile", "--json", "--seconds",
                                  str(args.seconds)], check=True, capture_output=True, text=True)
            profile = json.loads(out.stdout)
            pool = sum(o["ms_per_run"] for o in profile["operators"] if "Pool" in o["op"])
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
            session.run(None, {"x": x})
            runs, begin = 0, time.perf_counter()
            while time.perf_counter() - begin < args.seconds:
                session.run(None, {"x": x})
                runs += 1
            ort_ms = (time.perf_counter() - begin) * 1e3 / runs
            print(f"| {'x'.join(map(str, shape))} | {pool:.3f} | {ort_ms:.3f} | {pool / ort_ms:.1f} |")


if __name__ == "__main__":
    main()
