#!/usr/bin/env python3
"""Build the example distilled digit classifier for edgeinfer.

Run from anywhere (paths are relative to this file):

    python3 models/digits/build.py

Steps (all deterministic, fixed seeds):
  1. load scikit-learn's bundled 8x8 digits, stratified 80/20 split (random_state=0);
  2. train a TEACHER MLP 64-256-128-10 (sklearn MLPClassifier);
  3. distil a STUDENT MLP 64-32-10 in plain numpy on the teacher's
     temperature-softened outputs (T=4), plus a hard-label baseline of the same size;
  4. export the student to ONNX with onnx.helper (opset 13, ir_version 8);
  5. evaluate with onnxruntime and write README.md, labels.txt, model.toml,
     example-request.json and tests/fixtures/digits_golden.json.
"""

import json
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MODEL_PATH = os.path.join(HERE, "model.onnx")
GOLDEN_PATH = os.path.join(REPO, "tests", "fixtures", "digits_golden.json")

SEED = 0
PIXEL_SCALE = 1.0 / 16.0  # sklearn digits pixels are 0..16; exactly representable in fp32

TEACHER_HIDDEN = (256, 128)
TEACHER_MAX_ITER = 300

STUDENT_HIDDEN = 32
TEMPERATURE = 4.0
ALPHA_SOFT = 0.9  # loss = ALPHA_SOFT * T^2 * KL(teacher_T || student_T) + (1 - ALPHA_SOFT) * CE(hard)
EPOCHS = 200
BATCH = 32
LR = 0.005
NUM_CLASSES = 10
SWEEP_SEEDS = (0, 1, 2, 3, 4)  # extra student/baseline runs, only for the README's seed-variance table


# --------------------------------------------------------------------------- data

def load_data():
    digits = load_digits()
    X = digits.data.astype(np.float64)  # raw 0..16
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.2, stratify=y, random_state=0
    )
    return X_tr, X_te, y_tr, y_te


# --------------------------------------------------------------------------- teacher

def train_teacher(X_tr, y_tr):
    teacher = MLPClassifier(
        hidden_layer_sizes=TEACHER_HIDDEN,
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=64,
        learning_rate_init=1e-3,
        max_iter=TEACHER_MAX_ITER,
        random_state=SEED,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        teacher.fit(X_tr * PIXEL_SCALE, y_tr)
    assert list(teacher.classes_) == list(range(NUM_CLASSES))
    return teacher


def teacher_logits(teacher, X):
    """Pre-softmax logits of an sklearn MLPClassifier (relu hidden layers)."""
    h = X * PIXEL_SCALE
    n = len(teacher.coefs_)
    for i, (W, b) in enumerate(zip(teacher.coefs_, teacher.intercepts_)):
        h = h @ W + b
        if i < n - 1:
            h = np.maximum(h, 0.0)
    return h


# --------------------------------------------------------------------------- student (numpy)

def softmax(z, axis=1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def init_student(rng):
    # He (Kaiming) normal for the ReLU layer, Glorot-ish for the output layer.
    W1 = rng.normal(0.0, np.sqrt(2.0 / 64), size=(64, STUDENT_HIDDEN))
    b1 = np.zeros(STUDENT_HIDDEN)
    W2 = rng.normal(0.0, np.sqrt(1.0 / STUDENT_HIDDEN), size=(STUDENT_HIDDEN, NUM_CLASSES))
    b2 = np.zeros(NUM_CLASSES)
    return {"W1": W1, "b1": b1, "W2": W2, "b2": b2}


def student_forward(p, X):
    a = X * PIXEL_SCALE
    h_pre = a @ p["W1"] + p["b1"]
    h = np.maximum(h_pre, 0.0)
    z = h @ p["W2"] + p["b2"]
    return a, h_pre, h, z


def train_student(X_tr, y_tr, soft_targets_T, alpha_soft, seed):
    """Train a 64-32-10 MLP with Adam on mini-batches.

    soft_targets_T: teacher probabilities at temperature T (or None).
    alpha_soft: weight of the distillation term (0 => hard labels only).
    Gradient of T^2 * KL(p_t || softmax(z/T)) w.r.t. z is T * (softmax(z/T) - p_t).
    """
    rng = np.random.default_rng(seed)
    params = init_student(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    onehot = np.eye(NUM_CLASSES)[y_tr]
    n = len(X_tr)
    T = TEMPERATURE
    for _epoch in range(EPOCHS):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            xb = X_tr[idx]
            a, h_pre, h, z = student_forward(params, xb)
            dz = (1.0 - alpha_soft) * (softmax(z) - onehot[idx])
            if alpha_soft > 0.0:
                dz = dz + alpha_soft * T * (softmax(z / T) - soft_targets_T[idx])
            dz /= len(idx)
            grads = {
                "W2": h.T @ dz,
                "b2": dz.sum(axis=0),
            }
            dh = (dz @ params["W2"].T) * (h_pre > 0.0)
            grads["W1"] = a.T @ dh
            grads["b1"] = dh.sum(axis=0)
            step += 1
            for k in params:
                m[k] = beta1 * m[k] + (1 - beta1) * grads[k]
                v[k] = beta2 * v[k] + (1 - beta2) * grads[k] ** 2
                mhat = m[k] / (1 - beta1 ** step)
                vhat = v[k] / (1 - beta2 ** step)
                params[k] = params[k] - LR * mhat / (np.sqrt(vhat) + eps)
    return {k: val.astype(np.float32) for k, val in params.items()}


def distill_loss(params, X, soft_targets_T):
    """T^2 * KL(teacher_T || student_T), mean over samples (for reporting)."""
    _, _, _, z = student_forward({k: v.astype(np.float64) for k, v in params.items()}, X)
    T = TEMPERATURE
    q = softmax(z / T)
    p = soft_targets_T
    kl = np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))), axis=1)
    return float(np.mean(kl) * T * T)


# --------------------------------------------------------------------------- ONNX export

def build_onnx(params, doc):
    scale = numpy_helper.from_array(np.array(PIXEL_SCALE, dtype=np.float32), "pixel_scale")
    inits = [
        scale,
        numpy_helper.from_array(params["W1"].astype(np.float32), "fc1.weight"),
        numpy_helper.from_array(params["b1"].astype(np.float32), "fc1.bias"),
        numpy_helper.from_array(params["W2"].astype(np.float32), "fc2.weight"),
        numpy_helper.from_array(params["b2"].astype(np.float32), "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Mul", ["pixels", "pixel_scale"], ["scaled"], name="scale_pixels"),
        helper.make_node("Gemm", ["scaled", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1"),
        helper.make_node("Relu", ["fc1"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "fc2.weight", "fc2.bias"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_student",
        inputs=[helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="edgeinfer models/digits/build.py",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_session(model_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def ort_run(sess, X):
    logits, probs = sess.run(["logits", "probabilities"], {"pixels": X.astype(np.float32)})
    return logits, probs


# --------------------------------------------------------------------------- output helpers

def f32(x):
    """Shortest decimal that round-trips to the float32 value when parsed as float64->f32."""
    return repr(float(np.float32(x)))


def row(values):
    return "[" + ",".join(f32(x) for x in values) + "]"


def write_golden(path, X, y, logits, probs):
    lines = ["{"]
    lines.append('"model":"digits",')
    lines.append('"source":%s,' % json.dumps("onnxruntime " + ort.__version__))
    lines.append('"inputs":[')
    lines.append(",\n".join(row(r) for r in X))
    lines.append("],")
    lines.append('"labels":[' + ",".join(str(int(v)) for v in y) + "],")
    for key, mat in (("logits", logits), ("probabilities", probs)):
        lines.append('"%s":[' % key)
        lines.append(",\n".join(row(r) for r in mat))
        lines.append("]" + ("," if key == "logits" else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # sanity
    with open(path, "w", newline="\n") as f:
        f.write(text)


def count_params(arrays):
    return int(sum(np.asarray(a).size for a in arrays))


def main():
    X_tr, X_te, y_tr, y_te = load_data()
    print(f"data: {len(X_tr)} train / {len(X_te)} held-out samples, 64 features (0..16)")

    # Teacher
    teacher = train_teacher(X_tr, y_tr)
    t_logits_tr = teacher_logits(teacher, X_tr)
    t_logits_te = teacher_logits(teacher, X_te)
    # cross-check our logits against sklearn's own predictions
    assert np.array_equal(t_logits_te.argmax(1), teacher.predict(X_te * PIXEL_SCALE))
    teacher_acc = float(np.mean(t_logits_te.argmax(1) == y_te))
    teacher_train_acc = float(np.mean(t_logits_tr.argmax(1) == y_tr))
    teacher_params = count_params(teacher.coefs_ + teacher.intercepts_)
    print(f"teacher 64-{TEACHER_HIDDEN[0]}-{TEACHER_HIDDEN[1]}-10: held-out acc {teacher_acc:.4f} "
          f"(train {teacher_train_acc:.4f}, {teacher.n_iter_} epochs)")

    soft_T = softmax(t_logits_tr / TEMPERATURE)

    # Student (distilled) and hard-label baseline, same init seed, same schedule
    student = train_student(X_tr, y_tr, soft_T, ALPHA_SOFT, seed=SEED)
    baseline = train_student(X_tr, y_tr, None, 0.0, seed=SEED)
    student_params = count_params(student.values())

    doc = (
        "Handwritten digit classifier for scikit-learn's 8x8 digits (64 pixels, raw values 0..16; "
        "the graph scales by 1/16 itself). A 64-32(ReLU)-10 MLP student distilled (T=%g) from a "
        "64-%d-%d-10 MLP teacher. Outputs: logits [N,10] and probabilities = softmax(logits) [N,10]; "
        "class i is digit i. Built by models/digits/build.py in the edgeinfer repo."
        % (TEMPERATURE, TEACHER_HIDDEN[0], TEACHER_HIDDEN[1])
    )
    model = build_onnx(student, doc)
    model_bytes = model.SerializeToString()
    with open(MODEL_PATH, "wb") as f:
        f.write(model_bytes)
    # re-load from disk and check the saved file
    onnx.checker.check_model(MODEL_PATH, full_check=True)
    model_size = os.path.getsize(MODEL_PATH)

    sess = ort_session(MODEL_PATH)
    s_logits, s_probs = ort_run(sess, X_te)
    student_acc = float(np.mean(s_logits.argmax(1) == y_te))
    assert np.array_equal(s_probs.argmax(1), s_logits.argmax(1))

    # numpy reference vs onnxruntime
    _, _, _, np_logits = student_forward({k: v.astype(np.float64) for k, v in student.items()}, X_te)
    max_diff = float(np.max(np.abs(np_logits - s_logits)))
    assert max_diff < 1e-3, max_diff

    b_sess = ort_session(build_onnx(baseline, "hard-label baseline").SerializeToString())
    b_logits, _ = ort_run(b_sess, X_te)
    baseline_acc = float(np.mean(b_logits.argmax(1) == y_te))

    # seed sweep: how much of the distilled-vs-baseline gap is just init/shuffle noise?
    sweep = {"distilled": [], "baseline": []}
    for seed in SWEEP_SEEDS:
        for name, soft, alpha in (("distilled", soft_T, ALPHA_SOFT), ("baseline", None, 0.0)):
            if seed == SEED:
                acc = student_acc if name == "distilled" else baseline_acc
            else:
                p = train_student(X_tr, y_tr, soft, alpha, seed=seed)
                lg, _ = ort_run(ort_session(build_onnx(p, name).SerializeToString()), X_te)
                acc = float(np.mean(lg.argmax(1) == y_te))
            sweep[name].append(acc)
    print("seed sweep (held-out acc): " + "; ".join(
        f"{k} " + " ".join(f"{a:.4f}" for a in v) for k, v in sweep.items()))

    def sweep_row(name):
        v = np.array(sweep[name])
        return (" | ".join(f"{a:.4f}" for a in v)
                + f" | {v.mean():.4f} | {v.min():.4f}-{v.max():.4f}")

    # agreement of student with teacher on held-out
    agree_student = float(np.mean(s_logits.argmax(1) == t_logits_te.argmax(1)))
    agree_baseline = float(np.mean(b_logits.argmax(1) == t_logits_te.argmax(1)))
    soft_T_te = softmax(t_logits_te / TEMPERATURE)
    kd_student = distill_loss(student, X_te, soft_T_te)
    kd_baseline = distill_loss(baseline, X_te, soft_T_te)

    n_te = len(y_te)
    def frac(a):
        return f"{a:.4f} ({int(round(a * n_te))}/{n_te})"

    print(f"student 64-{STUDENT_HIDDEN}-10 (distilled, onnxruntime): held-out acc {student_acc:.4f}")
    print(f"baseline 64-{STUDENT_HIDDEN}-10 (hard labels only, onnxruntime): held-out acc {baseline_acc:.4f}")
    print(f"numpy vs onnxruntime max |logit diff|: {max_diff:.2e}")

    # labels.txt
    with open(os.path.join(HERE, "labels.txt"), "w", newline="\n") as f:
        f.write("".join(f"{i}\n" for i in range(NUM_CLASSES)))

    # model.toml
    toml = (
        "# Distilled 8x8 digit classifier (see README.md next to this file).\n"
        'description = "Handwritten digit classifier (8x8 pixels, values 0-16), a 64-32-10 student '
        f'distilled from a {TEACHER_HIDDEN[0]}-{TEACHER_HIDDEN[1]} MLP teacher"\n'
        'labels = "labels.txt"\n'
        "\n"
        "[[inputs]]\n"
        'name = "pixels"\n'
        'datatype = "FP32"\n'
        "shape = [-1, 64]   # -1: the batch dimension, any size\n"
        "\n"
        "[[outputs]]\n"
        'name = "logits"\n'
        'datatype = "FP32"\n'
        "shape = [-1, 10]\n"
        "\n"
        "[[outputs]]\n"
        'name = "probabilities"\n'
        'datatype = "FP32"\n'
        "shape = [-1, 10]\n"
    )
    with open(os.path.join(HERE, "model.toml"), "w", newline="\n") as f:
        f.write(toml)

    # golden fixtures
    os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
    write_golden(GOLDEN_PATH, X_te, y_te, s_logits, s_probs)

    # example request (first held-out sample)
    x0 = X_te[0]
    req = (
        '{\n  "id": "example-1",\n  "inputs": [\n    {\n      "name": "pixels",\n'
        '      "shape": [1, 64],\n      "datatype": "FP32",\n'
        '      "data": [' + ", ".join(f32(v) for v in x0) + "]\n"
        "    }\n  ]\n}\n"
    )
    json.loads(req)
    with open(os.path.join(HERE, "example-request.json"), "w", newline="\n") as f:
        f.write(req)
    p0 = s_probs[0]
    print(f"example-request.json: first held-out sample, true label {int(y_te[0])}, "
          f"expected argmax {int(p0.argmax())} (p={float(p0.max()):.6f})")
    print("  probabilities: [" + ", ".join(f"{float(v):.6f}" for v in p0) + "]")
    print("  logits:        [" + ", ".join(f"{float(v):.4f}" for v in s_logits[0]) + "]")

    # README.md
    golden_rel = os.path.relpath(GOLDEN_PATH, REPO)
    readme = f"""# digits: a distilled example model

A tiny handwritten-digit classifier used as edgeinfer's example model. It is a
64-{STUDENT_HIDDEN}-10 MLP *student* distilled from a larger MLP *teacher*, both
trained on scikit-learn's bundled 8x8 digits data set (`sklearn.datasets.load_digits`,
1797 images, no download needed).

| file | what |
|---|---|
| `model.onnx` | the student, ONNX opset 13, IR version 8 ({model_size} bytes) |
| `model.toml` | edgeinfer model config (inputs/outputs/labels) |
| `labels.txt` | class labels, line *i* = digit *i* |
| `example-request.json` | Open Inference Protocol request for the first held-out sample |
| `build.py` | the script that made all of the above and `{golden_rel}` |

## Interface

* input `pixels`: FP32 `[N, 64]`, `N` = batch (symbolic dim `N`); the 8x8 image in
  row-major order, **raw pixel values 0..16** as in `load_digits().data`. The graph
  scales by 1/16 itself.
* output `logits`: FP32 `[N, 10]`, pre-softmax scores.
* output `probabilities`: FP32 `[N, 10]`, `Softmax(logits, axis=1)`.
* class *i* is digit *i* (`labels.txt`).

Graph: `Mul(pixels, 1/16) -> Gemm(W1 64x{STUDENT_HIDDEN}, b1) -> Relu -> Gemm(W2 {STUDENT_HIDDEN}x10, b2) = logits -> Softmax(axis=1) = probabilities`.

For the first held-out sample (`example-request.json`, true label {int(y_te[0])}) the
expected answer is class **{int(p0.argmax())}** with probability {float(p0.max()):.6f}.

## How it was made

* **Data**: stratified 80/20 split with `random_state=0`:
  {len(X_tr)} training images, {n_te} held-out images. All numbers below are on the held-out split.
* **Teacher**: `sklearn.neural_network.MLPClassifier`, 64-{TEACHER_HIDDEN[0]}-{TEACHER_HIDDEN[1]}-10,
  ReLU, Adam (lr 1e-3, batch 64, L2 alpha 1e-4), {teacher.n_iter_} epochs (max {TEACHER_MAX_ITER}, sklearn's
  default loss-plateau stopping), inputs scaled by 1/16, `random_state={SEED}`.
  Its pre-softmax logits are computed from `coefs_`/`intercepts_`.
* **Student**: 64-{STUDENT_HIDDEN}(ReLU)-10 MLP, trained in plain numpy (float64, cast to
  float32 for export): He-normal init (seed {SEED}), Adam (lr {LR}, betas 0.9/0.999),
  mini-batches of {BATCH}, {EPOCHS} epochs, no regularisation, no early stopping,
  trained on the same {len(X_tr)} training images.
* **Distillation loss**: temperature T = {TEMPERATURE:g};
  `loss = {ALPHA_SOFT:g} * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + {1 - ALPHA_SOFT:.1f} * CE(student, hard label)`.
* **Baseline**: the same 64-{STUDENT_HIDDEN}-10 network, same init seed, optimiser and schedule,
  trained on hard labels only (plain cross-entropy). It shows what distillation bought.
* **Export**: written with `onnx.helper` only, checked with `onnx.checker.check_model(full_check=True)`.
  Student and baseline accuracies are measured by running the ONNX graph through onnxruntime
  {ort.__version__} (CPUExecutionProvider).

## Accuracy (held-out, {n_te} images)

| model | parameters | accuracy | agrees with teacher | T^2*KL to teacher (T={TEMPERATURE:g}) |
|---|---:|---:|---:|---:|
| teacher 64-{TEACHER_HIDDEN[0]}-{TEACHER_HIDDEN[1]}-10 (sklearn) | {teacher_params} | {frac(teacher_acc)} | - | - |
| student 64-{STUDENT_HIDDEN}-10, distilled (onnxruntime) | {student_params} | {frac(student_acc)} | {agree_student:.4f} | {kd_student:.4f} |
| baseline 64-{STUDENT_HIDDEN}-10, hard labels only (onnxruntime) | {student_params} | {frac(baseline_acc)} | {agree_baseline:.4f} | {kd_baseline:.4f} |

The student has {teacher_params / student_params:.0f}x fewer parameters than the teacher.
One held-out image is {100 / n_te:.2f} percentage points, so differences of a few images are
within run-to-run noise. To show how much, the same two recipes were re-run with
different student seeds (init and batch order; same teacher, same split). The committed
model is seed {SEED}.

| recipe (64-{STUDENT_HIDDEN}-10) | {" | ".join(f"seed {s}" for s in SWEEP_SEEDS)} | mean | range |
|---|{"---:|" * (len(SWEEP_SEEDS) + 2)}
| distilled (T={TEMPERATURE:g}, {ALPHA_SOFT:g} soft / {1 - ALPHA_SOFT:.1f} hard) | {sweep_row("distilled")} |
| hard labels only | {sweep_row("baseline")} |

Over these seeds the distilled recipe averages {100 * (np.mean(sweep["distilled"]) - np.mean(sweep["baseline"])):+.2f} percentage points
against hard-label training, with a spread of {100 * (max(sweep["distilled"]) - min(sweep["distilled"])):.2f} points (distilled) vs
{100 * (max(sweep["baseline"]) - min(sweep["baseline"])):.2f} points (hard labels). So: the 2.4k-parameter student gets within
about a point of the 51k-parameter teacher; on a data set this small and easy distillation's
accuracy gain is small and of the order of the seed noise, while the distilled student's
output distribution is much closer to the teacher's (KL column above).

## Golden test data

`{golden_rel}` holds, for every held-out image in split order, the
input, true label, and the `logits`/`probabilities` onnxruntime {ort.__version__}
(CPUExecutionProvider, one thread) produced from `model.onnx`. Floats are written with
full float32 precision (shortest decimal that round-trips). Other runtimes/builds may
differ in the last few ulps, so compare with a small tolerance (e.g. 1e-4 absolute on\nlogits, 1e-5 on probabilities; numpy float64 vs this float32 graph differs by at most\n{max_diff:.1e} on the logits).

## Rebuild

From the repository root:

```
pip install -r models/requirements.txt
python3 models/digits/build.py
```

The build is deterministic (fixed seeds): re-running it reproduces `model.onnx` and the
golden file byte for byte with the same library versions (built with numpy {np.__version__},
scikit-learn {sklearn.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__},
Python {sys.version.split()[0]}).
"""
    with open(os.path.join(HERE, "README.md"), "w", newline="\n") as f:
        f.write(readme)

    print(f"wrote {os.path.relpath(MODEL_PATH, REPO)} ({model_size} bytes), "
          f"{golden_rel} ({os.path.getsize(GOLDEN_PATH)} bytes), README.md, labels.txt, "
          "model.toml, example-request.json")
    print(f"summary: teacher {teacher_acc:.4f} ({teacher_params} params) | "
          f"distilled student {student_acc:.4f} ({student_params} params) | "
          f"hard-label baseline {baseline_acc:.4f}")


if __name__ == "__main__":
    main()
