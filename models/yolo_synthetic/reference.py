#!/usr/bin/env python3
"""Plain numpy reference of YOLO decode + class-wise NMS, run on the synthetic models through onnxruntime.

    python3 models/yolo_synthetic/build.py        # if the models changed
    python3 models/yolo_synthetic/reference.py    # system Python: numpy, onnxruntime, pillow

Writes tests/fixtures/detect/yolo/reference.json (and the 320 x 320 test picture square-320.png
beside it). Each image goes through what the daemon's `resize = "letterbox"` does:

  Pillow decode -> .convert("RGB") -> scale = min(320 / w, 320 / h), resized to
  round(w * scale) x round(h * scale) (round half up, as Rust's f64::round; at least 1, at most 320)
  with Pillow's BILINEAR -> placed top-left in a 320 x 320 zero image (pad right and bottom)
  -> / 255 -> NCHW float32 [1, 3, 320, 320]

then the model, then decode():

  v8 [1, 4 + nc, n]: per candidate i, the column output[0, :, i]: cx, cy, w, h, class scores;
     score = max class score, label = its index (the first on a tie)
  v5 [1, n, 5 + nc]: per candidate, the row: cx, cy, w, h, objectness, class scores;
     score = max over classes of objectness * class score (as YOLOv5's non_max_suppression
     multiplies them before taking the best class), label = its index
  keep score > 0.25 (strictly, as both YOLOv5 and ultralytics do); box x0 = cx - w/2,
  y0 = cy - h/2, x1 = cx + w/2, y1 = cy + h/2 in input pixels
  class-wise NMS, in input pixels: candidates sorted by score descending, ties by lower index
  first (a stable sort); walk the list, keep a box unless a kept box of the same label overlaps it
  with IoU > 0.45, IoU = inter / (area_a + area_b - inter) with area = (x1 - x0) * (y1 - y0) (no +1);
  stop at 300 kept
  map back: x / scale, y / scale, clipped to [0, width] and [0, height] (after NMS; a box is not
  dropped for being clipped)

The detections come out in that kept order (score descending, ties by lower index).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DETECT = REPO / "tests" / "fixtures" / "detect"
OUT = DETECT / "yolo"
SIZE = 320
PARAMS = {"input_size": [SIZE, SIZE], "score_threshold": 0.25, "score_compare": ">", "iou_threshold": 0.45,
          "iou_compare": "suppress if >", "max_detections": 300, "class_wise": True,
          "letterbox": "scale = min(320/w, 320/h), resized round(w*scale) x round(h*scale) (half up), "
                       "Pillow BILINEAR, top-left, pad 0 right and bottom; /255; RGB; NCHW",
          "map_back": "coord / scale, clipped to [0, width] x [0, height]",
          "v8_score": "max class score", "v5_score": "max over classes of objectness * class score"}
# (file under tests/fixtures/detect/, reused from the other fixtures or made here)
IMAGES = ["ocr/scene-02.png", "scrfd/faces-02.jpg", "yolo/square-320.png"]


def square_picture(path):
    """A seeded 320 x 320 picture: gradient and a few rectangles (any content does)."""
    rng = np.random.default_rng(12)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    arr = np.stack([x * 255 / (SIZE - 1), y * 255 / (SIZE - 1), np.full_like(x, 96.0)], axis=-1)
    for _ in range(6):
        x0, y0 = rng.integers(0, SIZE - 60, 2)
        w, h = rng.integers(20, 60, 2)
        arr[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    Image.fromarray(arr.astype(np.uint8), "RGB").save(path)


def letterbox(img):
    w, h = img.size
    scale = min(SIZE / w, SIZE / h)
    nw = min(SIZE, max(1, int(np.floor(w * scale + 0.5))))
    nh = min(SIZE, max(1, int(np.floor(h * scale + 0.5))))
    resized = img.resize((nw, nh), Image.Resampling.BILINEAR) if (nw, nh) != (w, h) else img
    canvas = np.zeros((SIZE, SIZE, 3), np.float32)
    canvas[:nh, :nw] = np.asarray(resized, np.float32) / 255.0
    return canvas.transpose(2, 0, 1)[None].copy(), scale, (nw, nh)


def decode(output, layout):
    if layout == "v8":
        rows = output[0].T  # [n, 4 + nc]
        boxes, scores_all = rows[:, :4], rows[:, 4:]
    else:
        rows = output[0]  # [n, 5 + nc]
        boxes, scores_all = rows[:, :4], rows[:, 4:5] * rows[:, 5:]
    labels = scores_all.argmax(1)
    scores = scores_all[np.arange(len(rows)), labels]
    cx, cy, w, h = boxes.T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return xyxy, scores, labels


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(xyxy, scores, labels):
    cand = [i for i in range(len(scores)) if scores[i] > PARAMS["score_threshold"]]
    cand.sort(key=lambda i: -float(scores[i]))  # stable: ties keep the lower index first
    kept = []
    for i in cand:
        if all(labels[k] != labels[i] or iou(xyxy[k], xyxy[i]) <= PARAMS["iou_threshold"] for k in kept):
            kept.append(i)
            if len(kept) == PARAMS["max_detections"]:
                break
    return kept


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    square_picture(OUT / "square-320.png")
    images = []
    for model in ("v8", "v5"):
        session = ort.InferenceSession(str(HERE / model / "model.onnx"), providers=["CPUExecutionProvider"])
        labels_txt = (HERE / model / "labels.txt").read_text().splitlines()
        for rel in IMAGES:
            img = Image.open(DETECT / rel).convert("RGB")
            tensor, scale, resized = letterbox(img)
            output = session.run(["output0"], {"images": tensor})[0].astype(np.float64)
            xyxy, scores, labels = decode(output, model)
            dets = []
            for i in nms(xyxy, scores, labels):
                x0, y0, x1, y1 = xyxy[i] / scale
                box = [float(np.clip(x0, 0, img.width)), float(np.clip(y0, 0, img.height)),
                       float(np.clip(x1, 0, img.width)), float(np.clip(y1, 0, img.height))]
                dets.append({"box": box, "score": float(scores[i]), "label": labels_txt[labels[i]],
                             "class": int(labels[i]), "candidate": i,
                             "input_box": [float(v) for v in xyxy[i]]})
            images.append({"file": rel, "model": model, "width": img.width, "height": img.height,
                           "resized": list(resized), "scale": scale,
                           "input_mean": float(tensor.mean()), "detections": dets})
            print(f"{model} {rel}: {img.width}x{img.height} -> {resized}, mean {tensor.mean():.5f}, "
                  f"{len(dets)} detections")
    doc = {"generator": "models/yolo_synthetic/reference.py",
           "models": {"v8": "models/yolo_synthetic/v8/model.onnx", "v5": "models/yolo_synthetic/v5/model.onnx"},
           "onnxruntime": ort.__version__,
           "note": "file: under tests/fixtures/detect/. score is computed in float64 from the float32 outputs. "
                   "candidate: index into the model's n candidates; input_box: in input (320 x 320) pixels before "
                   "mapping back. input_mean: mean of the input tensor (the models add 1e-3 * it to every score).",
           "params": PARAMS, "images": images}
    (OUT / "reference.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
