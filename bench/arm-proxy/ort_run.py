"""onnxruntime's side of bench/arm-proxy.sh: run a pack model N times on one thread, under qemu.

    python3 ort_run.py MODEL_DIR BATCH N

Inputs: the shapes model.toml declares (-1 becomes BATCH), or the ONNX file's own for inputs that
model.toml leaves out (session state such as silero's h and c); float inputs are uniform in [-1, 1)
(a fixed seed), integer inputs zero, as `edgeinfer bench --iterations` gives tract. onnxruntime's
defaults otherwise (graph optimisation level ALL), one intra-op and one inter-op thread.
"""

import sys
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def main():
    model_dir, batch, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    declared = {}
    toml = model_dir / "model.toml"
    if toml.exists():
        for spec in tomllib.loads(toml.read_text()).get("inputs", []):
            declared[spec["name"]] = [batch if d < 0 else d for d in spec["shape"]]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = declared.get(i.name, i.shape)
        if not all(isinstance(d, int) for d in shape):
            sys.exit(f"ort_run.py: input {i.name} has shape {shape}: declare it in {toml}")
        dtype = DTYPES.get(i.type)
        if dtype is None:
            sys.exit(f"ort_run.py: input {i.name} has type {i.type}, not supported here")
        if dtype is np.float32:
            feeds[i.name] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        else:
            feeds[i.name] = np.zeros(shape, dtype=dtype)
    for _ in range(n):
        session.run(None, feeds)


if __name__ == "__main__":
    main()
