#!/usr/bin/env python3
"""onnxruntime's answers on the random-weight pack models, for tests/pack_models.rs.

    python3 models/fetch.py          # makes target/pack-random/<name>/model.onnx
    python3 models/make_goldens.py

For each model in fetch.py's RANDOM list, writes into tests/fixtures/:

  <name>_random_input.npy     one seeded input, FP32 [1, 3, 224, 224]: values (u - 128) / 64 for
                              random bytes u, so every value is exact in FP32 (and in FP16)
  <name>_random_golden.json   the sha256 of the random-weight model it belongs to, and onnxruntime's
                              outputs (CPUExecutionProvider, one thread) for each case: the input as
                              is ("none") and, for models that take a batch, the input mirrored along
                              its last axis ("flip_w"), so a test can send both as a batch of two

Deterministic: the same model and library versions reproduce the files byte for byte.
"""

import json
import sys

import numpy as np
import onnxruntime as ort

from fetch import FIXTURES, MODELS, RANDOM, RANDOM_DIR, REPO, sha256

# Input seed per model, and whether the model.toml takes a batch (then a second, mirrored case).
INPUTS = {"squeezenet": (10, True), "resnet50": (20, False)}


def f32(x):
    """Shortest decimal that round-trips to the float32 value."""
    return repr(float(np.float32(x)))


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the light files list an unused initializer; not worth a warning
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def main():
    for name, random_seed in RANDOM:
        model = RANDOM_DIR / name / "model.onnx"
        if not model.is_file():
            sys.exit(f"make_goldens.py: {model} is missing: run python3 models/fetch.py first")
        seed, batched = INPUTS[name]
        u = np.random.default_rng(seed).integers(0, 256, size=(1, 3, 224, 224))
        x = ((u.astype(np.float32) - 128.0) / 64.0).astype(np.float32)
        input_path = FIXTURES / f"{name}_random_input.npy"
        np.save(input_path, x)

        sess = session(model)
        (input_meta,) = sess.get_inputs()
        cases = [("none", x)] + ([("flip_w", np.ascontiguousarray(x[..., ::-1]))] if batched else [])
        lines = ["{"]
        meta = {
            "model": name,
            "random_model": str(model.relative_to(REPO)),
            "model_sha256": sha256(model),
            "random_seed": random_seed,
            "original_sha256": sha256(MODELS / name / "model.onnx"),
            "made_by": "models/make_goldens.py",
            "source": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread",
            "input": input_path.name,
            "input_name": input_meta.name,
            "input_seed": seed,
            "input_sha256": sha256(input_path),
        }
        lines += [f"{json.dumps(k)}:{json.dumps(v)}," for k, v in meta.items()]
        lines.append('"cases":[')
        case_texts = []
        for transform, data in cases:
            outs = sess.run(None, {input_meta.name: data})
            fields = [
                f'{json.dumps(o.name)}:{{"shape":{json.dumps(list(v.shape))},\n"data":['
                + ",".join(f32(a) for a in v.ravel()) + "]}"
                for o, v in zip(sess.get_outputs(), outs)
            ]
            case_texts.append(f'{{"transform":"{transform}","outputs":{{' + ",\n".join(fields) + "}}")
            summary = ", ".join(f"{o.name} {list(v.shape)} in [{v.min():.4g}, {v.max():.4g}]"
                                for o, v in zip(sess.get_outputs(), outs))
            print(f"make_goldens.py: {name} ({transform}): {summary}")
        lines.append(",\n".join(case_texts))
        lines.append("]}")
        text = "\n".join(lines) + "\n"
        json.loads(text)  # sanity
        golden = FIXTURES / f"{name}_random_golden.json"
        golden.write_text(text)
        print(f"make_goldens.py: wrote {input_path.relative_to(REPO)} ({input_path.stat().st_size} bytes), "
              f"{golden.relative_to(REPO)} ({golden.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
