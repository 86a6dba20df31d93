#!/usr/bin/env python3
"""Run model.onnx through tract (the edgeinfer binary, no Rust built here) at fixed shapes and
compare with onnxruntime.

    python3 models/smollm2/check_tract.py [--edgeinfer target/debug/edgeinfer] [--seq 1 --past 16]

edgeinfer serves fixed shapes only (model.toml: concrete dimensions, at most a -1 batch, none 0),
so this writes a temporary model directory whose model.toml fixes input_ids/position_ids to
[1, seq] and every past_key_values.* to [1, 3, past, 64], links model.onnx into it, runs
`edgeinfer inspect` (can tract load it?) and `edgeinfer infer` on the KV cache onnxruntime made
for the first `past` tokens of a chat prompt, and compares logits and present.* with
onnxruntime's. This checks the ops and their numerics in tract, not tract's rewrites for symbolic
sequence lengths (KV cache, rope, masked softmax), which need the Rust side.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime import HERE, PROMPTS, OnnxLM, apply_chat_template, load_tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgeinfer", default=str(HERE.parent.parent / "target" / "debug" / "edgeinfer"))
    ap.add_argument("--seq", type=int, default=1)
    ap.add_argument("--past", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=0, help="index into runtime.PROMPTS")
    args = ap.parse_args()
    if args.past < 1:
        sys.exit("check_tract.py: edgeinfer's model.toml takes no 0 dimension: --past must be >= 1")

    hf = load_tokenizer()
    ids = hf.encode(apply_chat_template([{"role": "user", "content": PROMPTS[args.prompt]}]),
                    add_special_tokens=False).ids
    need = args.past + args.seq
    if len(ids) < need:
        sys.exit(f"check_tract.py: the prompt has {len(ids)} tokens, {need} needed")
    lm = OnnxLM()
    _, cache = lm.step(ids[:args.past], lm.empty_cache(), 0)
    new = ids[args.past:need]
    ref_logits, ref_cache = lm.step(new, cache, args.past)

    with tempfile.TemporaryDirectory() as tmp:
        name = f"smollm2_s{args.seq}_p{args.past}"
        d = Path(tmp) / name
        d.mkdir()
        os.symlink(HERE / "model.onnx", d / "model.onnx")
        toml = ['description = "check_tract.py: model.onnx at fixed shapes"']
        for n in ("input_ids", "position_ids"):
            toml += ["[[inputs]]", f'name = "{n}"', 'datatype = "INT64"', f"shape = [1, {args.seq}]"]
        for n in cache:
            toml += ["[[inputs]]", f'name = "{n}"', 'datatype = "FP32"',
                     f"shape = [1, {lm.kv_heads}, {args.past}, {lm.head_dim}]"]
        (d / "model.toml").write_text("\n".join(toml) + "\n")

        t0 = time.time()
        p = subprocess.run([args.edgeinfer, "inspect", str(d / "model.onnx")], capture_output=True, text=True)
        verdict = [line for line in p.stdout.splitlines() if line.startswith("tract:")]
        print(f"edgeinfer inspect ({time.time() - t0:.1f} s): {verdict[0] if verdict else p.stdout[-500:]}"
              + (p.stderr.strip() and f"\n{p.stderr.strip()}"))
        if p.returncode != 0:
            sys.exit(1)

        req = {"id": "check_tract", "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [1, args.seq], "data": new},
            {"name": "position_ids", "datatype": "INT64", "shape": [1, args.seq],
             "data": list(range(args.past, need))},
        ] + [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
             for n, v in cache.items()]}
        (Path(tmp) / "request.json").write_text(json.dumps(req))
        t0 = time.time()
        p = subprocess.run([args.edgeinfer, "infer", "--models", tmp, name, "-i",
                            str(Path(tmp) / "request.json")], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"edgeinfer infer failed:\n{p.stderr[-3000:]}")
        print(f"edgeinfer infer: {time.time() - t0:.1f} s (load, optimise and one run of a debug "
              "binary, JSON in and out: not a speed measurement)")
    outs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(p.stdout)["outputs"]}
    lg = outs["logits"]
    worst_kv = max(float(np.abs(outs[k.replace("past_key_values.", "present.")] - v).max())
                   for k, v in ref_cache.items())
    same_argmax = bool((lg.argmax(-1) == ref_logits.argmax(-1)).all())
    print(f"tract vs onnxruntime: logits max |diff| {float(np.abs(lg - ref_logits).max()):.2e} "
          f"(range {float(ref_logits.min()):.1f}..{float(ref_logits.max()):.1f}), argmax "
          f"{'equal' if same_argmax else 'DIFFERENT'} at all {args.seq} positions; present.* max |diff| "
          f"{worst_kv:.2e}")


if __name__ == "__main__":
    main()
