#!/usr/bin/env python3
"""Where the time goes: tract's per-operator profile of a model beside onnxruntime's own.

For each model: `edgeinfer bench MODEL --profile --json` times every node of the plan a request
runs (one thread, pseudo-random inputs, batch 1); onnxruntime runs the same ONNX file with
`SessionOptions.enable_profiling` (one intra-op thread, its default graph optimisations) on
inputs of the same shapes, and its trace's `Node` events are summed by `op_name`.

The two engines fuse differently, so the operator names differ: tract's OptMatMul is every
Conv/Gemm/MatMul after lowering; onnxruntime's FusedConv is Conv+activation. Each table is
therefore printed as its engine names it, with the share of the time in nodes, plus the two
engines' milliseconds per inference. The comparison is per inference and per operator family:

  conv/matmul   tract: OptMatMul, OptMatMulPack, LazyIm2col, MatMul*   onnxruntime: Conv, FusedConv, Gemm, MatMul*, QLinear*
  pooling       tract: *Pool*                                         onnxruntime: *Pool*
  the rest

Usage: python3 bench/operators.py [--models squeezenet resnet50 ...] [--seconds 3] [--edgeinfer PATH]
Prints markdown. Timings are wall time on this machine: run it when nothing else runs.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAMILIES = [
    ("conv/matmul", ("matmul", "conv", "gemm", "im2col", "qlinear")),
    ("pooling", ("pool",)),
]


def family(op):
    lowered = op.lower()
    for name, keys in FAMILIES:
        if any(k in lowered for k in keys):
            return name
    return "the rest"


def find_edgeinfer(given):
    for candidate in [given, "/tmp/edgeinfer-release/release/edgeinfer", os.path.join(ROOT, "target/release/edgeinfer"),
                      os.path.join(ROOT, "target/debug/edgeinfer")]:
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("operators.py: no edgeinfer binary (cargo build --release, or --edgeinfer PATH)")


def tract_profile(edgeinfer, model, seconds):
    out = subprocess.run([edgeinfer, "bench", model, "--models", os.path.join(ROOT, "models"), "--profile", "--json",
                          "--seconds", str(seconds)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    ops = {o["op"]: o["ms_per_run"] for o in result["operators"]}
    return result["ms_per_run"], ops, result["input_shapes"]


def random_inputs(session, shapes):
    """The same kind of inputs as edgeinfer bench: pseudo-random in [-1, 1), of the shapes tract
    profiled (the graph's inputs in order; a free dimension took tract's warm-up size)."""
    rng = np.random.default_rng(1)
    feeds = {}
    for i, shape in zip(session.get_inputs(), shapes):
        if i.type == "tensor(float)":
            feeds[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            feeds[i.name] = np.zeros(shape, dtype=np.int64 if "int64" in i.type else np.float32)
    return feeds


def ort_profile(model, seconds, shapes):
    path = os.path.join(ROOT, "models", model, "model.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feeds = random_inputs(session, shapes)
        session.run(None, feeds)  # the first run allocates; not counted below
        runs = 0
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds or runs < 5:
            session.run(None, feeds)
            runs += 1
        wall = (time.perf_counter() - begin) * 1e3 / runs
        trace = session.end_profiling()
        events = json.load(open(trace))
    ops = {}
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        ops[op] = ops.get(op, 0.0) + event["dur"] / 1e3
    # The trace holds the warm-up run too: per run over every model_run event.
    per = max(len(model_runs), 1)
    return wall, {op: ms / per for op, ms in ops.items()}


def table(title, ms, ops):
    total = sum(ops.values()) or 1.0
    lines = [f"**{title}**: {ms:.2f} ms per inference, {total:.2f} ms in nodes", "",
             "| operator | ms per inference | share |", "|---|--:|--:|"]
    for op, t in sorted(ops.items(), key=lambda kv: -kv[1]):
        if t / total >= 0.001:
            lines.append(f"| {op} | {t:.3f} | {100 * t / total:.1f} % |")
    return "\n".join(lines)


def families(ops):
    sums = {}
    for op, t in ops.items():
        sums[family(op)] = sums.get(family(op), 0.0) + t
    return sums


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_models = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "models/*/model.onnx")))
    parser.add_argument("--models", nargs="+", default=default_models, help="models of models/ (default: every one with a model.onnx)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of runs per engine and model")
    parser.add_argument("--edgeinfer", help="the edgeinfer binary (default: the release build, else the debug one)")
    args = parser.parse_args()
    edgeinfer = find_edgeinfer(args.edgeinfer)
    print(f"edgeinfer: `{edgeinfer}`; onnxruntime {ort.__version__}, 1 thread; {args.seconds} s per engine and model\n")
    summary = ["| model | tract ms | onnxruntime ms | ratio | conv/matmul tract / ort ms | pooling tract / ort ms | the rest tract / ort ms |",
               "|---|--:|--:|--:|--:|--:|--:|"]
    details = []
    for model in args.models:
        try:
            tract_ms, tract_ops, shapes = tract_profile(edgeinfer, model, args.seconds)
        except subprocess.CalledProcessError as e:
            details.append(f"### {model}\n\ntract profile failed: {e.stderr.strip()[:300]}\n")
            continue
        ort_ms, ort_ops = ort_profile(model, args.seconds, shapes)
        tf, of = families(tract_ops), families(ort_ops)
        cells = [f"{tf.get(k, 0):.2f} / {of.get(k, 0):.2f}" for k in ("conv/matmul", "pooling", "the rest")]
        summary.append(f"| {model} | {tract_ms:.2f} | {ort_ms:.2f} | {tract_ms / ort_ms:.2f} | " + " | ".join(cells) + " |")
        shown = ", ".join("x".join(map(str, s)) for s in shapes)
        details.append(f"### {model} (inputs {shown})\n\n{table('tract', tract_ms, tract_ops)}\n\n{table('onnxruntime', ort_ms, ort_ops)}\n")
    print("\n".join(summary))
    print()
    print("\n".join(details))


if __name__ == "__main__":
    main()
