#!/usr/bin/env python3
"""Builds two tiny synthetic YOLO models whose outputs are known: models/yolo_synthetic/{v8,v5}/model.onnx.

    python3 models/yolo_synthetic/build.py        # system Python: numpy + onnx (models/requirements.txt)

No YOLO model ships on PyPI, so these stand in for one when testing the daemon's YOLO decode and
class-wise NMS (issue 12). Both take "images" FP32 [1, 3, 320, 320] and return a fixed, seeded table
of N = 200 candidates for NC = 3 classes (labels.txt), laid out as the real exports are:

  v8/model.onnx  "output0" [1, 4 + NC, N]   rows cx, cy, w, h (input pixels), then NC class scores;
                                            no objectness (YOLOv8 / ultralytics export)
  v5/model.onnx  "output0" [1, N, 5 + NC]   per candidate cx, cy, w, h, objectness, NC class scores
                                            (YOLOv5 export)

The output depends on the input a little: every score (v8: the class scores; v5: objectness and
class scores; never the box) gets + 1e-3 * ReduceMean(images), the mean over the whole input tensor
(0 for a zero input, up to 1e-3 for a white image scaled to [0, 1]). So a zero input and a real image
give slightly different scores, and a runtime that ignores the input is caught. The table keeps
every score at least 0.01 away from the 0.25 threshold, so that term never changes which candidates
pass; passing scores are either exactly tied (the deliberate tie, which the term keeps tied) or at
least 1e-4 apart, so two implementations whose resize gives a slightly different input mean (a
change of the term far below 1e-6) rank them alike. The term can reorder close v5 scores between a
zero input and a real image (obj * cls moves by 1e-3 * (obj + cls)); v8 scores all move alike.

The candidates (see table()): clusters of overlapping boxes, some of one class (NMS must keep only the
best), some mixing two classes over the same object (class-wise NMS must keep the best of each), some
candidates below the threshold, a pair of exactly tied scores on separate boxes (ties go to the lower
index), boxes running over the right edge (clipping), all with centres in the top 320 x 170 of the
input so that they stay inside the picture of a 16:9 image letterboxed top-left. Seeded (numpy
default_rng(12)); the same seed gives the same bytes.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
N, NC, SIZE = 200, 3, 320
LABELS = ["person", "car", "sign"]
EPS = 1e-3
SEED = 12


def table():
    """(boxes [N, 4] cx cy w h, objectness [N], class scores [N, NC]) as float32."""
    rng = np.random.default_rng(SEED)
    boxes, obj, cls = [], [], []

    def add(cx, cy, w, h, o, scores):
        boxes.append([cx, cy, w, h])
        obj.append(o)
        cls.append(scores)

    def cluster(cx, cy, w, h, classes, count, top):
        """count jittered boxes around one object; each class in classes gets its own best box."""
        for k in range(count):
            c = classes[k % len(classes)]
            j = rng.uniform(-0.08, 0.08, 4)
            s = np.zeros(NC)
            best = top - 0.02 * (k // len(classes)) - rng.uniform(0.0, 0.01)
            s[c] = best
            for other in range(NC):
                if other != c:
                    s[other] = rng.uniform(0.0, 0.12)
            add(cx + j[0] * w, cy + j[1] * h, w * (1 + j[2]), h * (1 + j[3]), rng.uniform(0.8, 0.98), s)

    # one class per object: a single survivor each
    cluster(40, 40, 50, 60, [0], 12, 0.93)
    cluster(140, 60, 70, 40, [1], 10, 0.88)
    cluster(250, 40, 40, 40, [2], 8, 0.81)
    # two classes on one object: both best boxes survive (not class-agnostic NMS)
    cluster(90, 130, 80, 60, [0, 1], 16, 0.9)
    cluster(220, 120, 60, 70, [1, 2], 14, 0.77)
    # all three classes on one object
    cluster(170, 150, 40, 30, [0, 1, 2], 15, 0.69)
    # over the right edge: clipped to the image
    cluster(305, 100, 50, 40, [2], 8, 0.72)
    # a small one of two boxes overlapping a little (IoU under 0.45 after jitter is not certain;
    # the reference computes it, no promise is made here)
    cluster(20, 165, 24, 18, [1], 4, 0.61)
    # two separate boxes with exactly the same score and class: the lower index comes first
    add(60, 90, 20, 20, 0.9, [0.0, 0.0, 0.55])
    add(280, 160, 20, 20, 0.9, [0.0, 0.0, 0.55])
    # isolated weak candidates below the threshold (v8 class score; v5 obj * cls)
    while len(boxes) < N:
        s = rng.uniform(0.0, 0.2, NC)
        add(rng.uniform(10, 310), rng.uniform(10, 170), rng.uniform(8, 60), rng.uniform(8, 60),
            rng.uniform(0.05, 0.95), s)
    boxes = np.array(boxes, np.float32)[:N]
    obj = np.array(obj, np.float32)[:N]
    cls = np.array(cls, np.float32)[:N]
    # Nudge a passing candidate's best class score up by 3e-4 while its v8 or v5 score is within 1e-4
    # of an earlier candidate's (the deliberate tie, indices tie and tie + 1, is left alone).
    tie = next(i for i in range(N) if cls[i, 2] == np.float32(0.55) and obj[i] == np.float32(0.9))
    for i in range(N):
        c = int(cls[i].argmax())
        while i != tie + 1 and cls[i, c] > 0.25 and any(
                abs(a[i] - a[j]) < 1e-4 for j in range(i)
                for a in (cls.max(1), (obj[:, None] * cls).max(1))):
            cls[i, c] += np.float32(3e-4)
    return boxes, obj, cls


def check_margins(obj, cls):
    """Scores stay clear of the 0.25 threshold (the 1e-3 term moves a v8 score by at most 1e-3, a v5
    obj * cls by at most ~2e-3), and passing scores are exactly tied or at least 1e-4 apart."""
    for name, scores in (("v8", cls.max(1)), ("v5", (obj[:, None] * cls).max(1))):
        assert np.all(np.abs(scores - 0.25) > 0.01), name
        top = np.sort(scores[scores > 0.25])
        gaps = np.diff(top)
        assert np.all((gaps == 0) | (gaps > 1e-4)), (name, gaps[gaps > 0].min())


def graph(name, table_value, mask_value, out_shape):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),  # scalar, opset 17: all axes
        helper.make_node("Mul", ["mask", "mean"], ["delta"]),
        helper.make_node("Add", ["table", "delta"], ["output0"]),
    ]
    inits = [numpy_helper.from_array(table_value.astype(np.float32), "table"),
             numpy_helper.from_array(mask_value.astype(np.float32), "mask")]
    g = helper.make_graph(nodes, name, [images], [out], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeinfer-yolo-synthetic")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    boxes, obj, cls = table()
    check_margins(obj, cls)

    v8 = np.concatenate([boxes, cls], axis=1).T[None]  # [1, 4 + NC, N]
    mask8 = np.zeros_like(v8)
    mask8[:, 4:, :] = EPS
    v5 = np.concatenate([boxes, obj[:, None], cls], axis=1)[None]  # [1, N, 5 + NC]
    mask5 = np.zeros_like(v5)
    mask5[:, :, 4:] = EPS

    for sub, t, mask, shape in (("v8", v8, mask8, [1, 4 + NC, N]), ("v5", v5, mask5, [1, N, 5 + NC])):
        d = HERE / sub
        d.mkdir(exist_ok=True)
        m = graph(f"yolo_synthetic_{sub}", t, mask, shape)
        (d / "model.onnx").write_bytes(m.SerializeToString())
        (d / "labels.txt").write_text("".join(l + "\n" for l in LABELS))
        print(f"{d.relative_to(HERE.parent.parent)}/model.onnx: {(d / 'model.onnx').stat().st_size} bytes, "
              f"output0 {shape}")


if __name__ == "__main__":
    main()
