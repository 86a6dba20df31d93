#!/usr/bin/env python3
"""Reference fixtures for text detection + OCR (issue 12): tests/fixtures/detect/ocr/.

Runs in a venv, not in the system Python (whose numpy/onnx/onnxruntime/pillow are pinned by
models/requirements.txt and must stay as they are):

    python3 -m venv /tmp/fixtures-venv
    /tmp/fixtures-venv/bin/pip install -r models/requirements-fixtures.txt
    /tmp/fixtures-venv/bin/pip install --no-deps ~/.cache/edgeinfer-models/wheels/scrfd-0.3.0.tar.gz  # SCRFD only
    /tmp/fixtures-venv/bin/python models/make_ocr_fixtures.py

Renders the scenes (seeded, deterministic) with Pillow and a DejaVu font (the machine's
/usr/share/fonts/truetype/dejavu/, else Pillow's bundled scalable default font), saves them as
JPEG (quality 90) or PNG, and runs RapidOCR 1.4.4 (rapidocr_onnxruntime, its packaged models and
config.yaml, defaults: det + cls + rec) on each saved file, once as its whole pipeline and once its
TextDetector alone (with the same Global preprocessing the pipeline applies), and writes
tests/fixtures/detect/ocr/rapidocr.json. Run once by a developer; the outputs are committed and CI
never runs this. tests/fixtures/detect/README.md explains the scenes and RapidOCR's steps.
"""

import json
import random
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rapidocr_onnxruntime import RapidOCR

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "detect" / "ocr"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
SEED = 12

# (file, width, height, background, lines); background: ("solid", rgb) | ("vgrad", top, bottom) |
# ("hgrad", left, right) | ("noise", rgb, sigma). A line: (text, size, x, y, rgb, rotated, font).
SCENES = [
    ("scene-01.jpg", 1280, 720, ("solid", (245, 245, 240)), [
        ("METER 004512 kWh", 60, 80, 60, (20, 20, 20), False, "bold"),
        ("Platform 3 -> Zurich HB", 48, 80, 170, (10, 40, 120), False, "sans"),
        ("Departure 14:32", 40, 80, 270, (150, 20, 20), False, "sans"),
        ("Serial No 7731-0042", 32, 80, 360, (40, 40, 40), False, "mono"),
        ("Track closed until 18:05", 36, 620, 450, (0, 90, 30), False, "sans"),
        ("Voltage 230 V 50 Hz", 28, 80, 600, (60, 60, 60), False, "sans"),
    ]),
    ("scene-02.png", 640, 480, ("solid", (18, 30, 18)), [
        ("METER 004512 kWh", 44, 40, 60, (120, 255, 120), False, "mono"),
        ("TARIFF 2", 32, 40, 170, (120, 255, 120), False, "mono"),
        ("SERIAL 77-3190", 24, 40, 260, (200, 230, 200), False, "sans"),
        ("Reading 2024-03-18", 26, 40, 380, (200, 230, 200), False, "sans"),
    ]),
    ("scene-03.jpg", 1920, 1080, ("vgrad", (30, 60, 140), (10, 20, 60)), [
        ("Platform 3 -> Zurich HB", 60, 120, 100, (255, 255, 255), False, "bold"),
        ("Departure 14:32", 52, 120, 260, (255, 220, 0), False, "sans"),
        ("Delay 5 min", 44, 1200, 260, (255, 120, 120), False, "sans"),
        ("Next train 14:47 Basel SBB", 40, 120, 480, (230, 230, 230), False, "sans"),
        ("Sector A B C", 36, 120, 700, (230, 230, 230), True, "sans"),
        ("Gleis 3", 56, 1300, 850, (255, 255, 255), False, "bold"),
    ]),
    ("scene-04.png", 640, 480, ("solid", (255, 255, 255)), [
        ("BATCH 0815", 40, 40, 40, (0, 0, 0), False, "bold"),
        ("Net weight 500 g", 30, 40, 130, (0, 0, 0), False, "sans"),
        ("Best before 2025-11-30", 26, 40, 230, (80, 0, 0), True, "sans"),
        ("Store below 25 C", 24, 40, 330, (0, 0, 90), False, "sans"),
        ("Lot 42", 34, 420, 400, (0, 0, 0), True, "bold"),
    ]),
    ("scene-05.jpg", 1280, 720, ("noise", (200, 200, 190), 8), [
        ("EXIT", 60, 100, 80, (0, 110, 40), False, "bold"),
        ("Emergency exit only", 40, 100, 220, (0, 0, 0), False, "sans"),
        ("Door 12B", 36, 800, 220, (120, 0, 0), False, "sans"),
        ("Keep clear 24 h", 32, 100, 400, (30, 30, 30), False, "sans"),
        ("Fire alarm test Monday 09:00", 28, 100, 560, (50, 50, 50), False, "sans"),
    ]),
    ("scene-06.jpg", 640, 480, ("hgrad", (250, 230, 200), (200, 220, 250)), [
        ("Gas meter 12345.678 m3", 30, 30, 50, (20, 20, 20), False, "sans"),
        ("PRESSURE 2.5 bar", 36, 30, 150, (120, 0, 0), False, "bold"),
        ("Temp 21.4 C", 44, 30, 260, (0, 60, 0), False, "sans"),
        ("ID 998877", 20, 30, 400, (0, 0, 0), False, "mono"),
    ]),
    ("scene-07.png", 1280, 720, ("vgrad", (255, 255, 255), (200, 200, 200)), [
        ("Room 204", 56, 80, 60, (0, 0, 0), False, "bold"),
        ("Meeting in progress", 40, 80, 200, (90, 0, 0), False, "sans"),
        ("Open 08:00 - 17:30", 36, 80, 330, (0, 0, 0), True, "sans"),
        ("Floor 2 West", 32, 700, 480, (40, 40, 40), False, "sans"),
        ("Capacity 12", 28, 80, 600, (0, 0, 100), True, "sans"),
    ]),
    ("scene-08.jpg", 1920, 1080, ("noise", (60, 60, 70), 10), [
        ("PARKING LEVEL 3", 60, 150, 120, (255, 255, 255), False, "bold"),
        ("Max height 2.10 m", 48, 150, 320, (255, 220, 80), False, "sans"),
        ("Spaces free 017", 44, 1100, 320, (120, 255, 120), False, "mono"),
        ("Pay at machine", 40, 150, 560, (255, 255, 255), True, "sans"),
        ("Exit -> Street 5", 52, 1100, 760, (255, 255, 255), True, "sans"),
        ("Tel 044 123 45 67", 32, 150, 900, (220, 220, 220), False, "sans"),
    ]),
    ("scene-09.jpg", 640, 480, ("solid", (230, 236, 245)), [
        ("Water 000873 m3", 22, 20, 30, (0, 0, 0), False, "sans"),
        ("Flow 1.25 l/min", 20, 20, 110, (0, 0, 0), False, "sans"),
        ("Model WM-20", 28, 320, 200, (0, 40, 120), False, "bold"),
        ("Made in Switzerland", 20, 20, 300, (60, 60, 60), False, "sans"),
        ("Check 2026", 24, 360, 400, (120, 0, 0), True, "sans"),
    ]),
    ("scene-10.jpg", 1280, 720, ("vgrad", (240, 240, 250), (170, 180, 210)), []),
]

FONT_FILES = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "mono": "DejaVuSansMono.ttf"}


def font(kind, size):
    path = DEJAVU / FONT_FILES[kind]
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def font_name(kind):
    path = DEJAVU / FONT_FILES[kind]
    return FONT_FILES[kind] if path.is_file() else "Pillow load_default (Aileron Regular)"


def background(width, height, spec, rng):
    y = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :, None]
    kind = spec[0]
    if kind == "solid":
        arr = np.broadcast_to(np.array(spec[1], np.float64), (height, width, 3))
    elif kind == "vgrad":
        a, b = np.array(spec[1], np.float64), np.array(spec[2], np.float64)
        arr = np.broadcast_to(a + (b - a) * y, (height, width, 3))
    elif kind == "hgrad":
        a, b = np.array(spec[1], np.float64), np.array(spec[2], np.float64)
        arr = np.broadcast_to(a + (b - a) * x, (height, width, 3))
    elif kind == "noise":
        arr = np.array(spec[1], np.float64) + rng.normal(0.0, spec[2], (height, width, 1))
    else:
        raise ValueError(kind)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def render(scene, rng):
    name, width, height, bg, lines = scene
    img = background(width, height, bg, rng)
    rendered = []
    for text, size, x, y, rgb, rotated, kind in lines:
        f = font(kind, size)
        l, t, r, b = f.getbbox(text)
        layer = Image.new("L", (r + 4, b + 4), 0)
        ImageDraw.Draw(layer).text((2, 2), text, font=f, fill=255)
        layer = layer.crop(layer.getbbox())  # exact ink bounds
        if rotated:
            layer = layer.rotate(180)
        w, h = layer.size
        assert x + w <= width and y + h <= height, (name, text, x + w, y + h)
        box = [x, y, x + w, y + h]
        for other in rendered:
            o = other["box"]
            assert box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1], (name, text)
        img.paste(Image.new("RGB", layer.size, rgb), (x, y), layer)
        rendered.append({"text": text, "rotated": rotated, "box": [float(v) for v in box],
                         "size_px": size, "font": font_name(kind), "colour": list(rgb)})
    return img, rendered


def save(img, path):
    if path.suffix == ".jpg":
        img.save(path, quality=90, subsampling=2, optimize=False)
    else:
        img.save(path, optimize=False)


def poly_box(poly):
    poly = np.asarray(poly, dtype=np.float64)
    return [float(poly[:, 0].min()), float(poly[:, 1].min()), float(poly[:, 0].max()), float(poly[:, 1].max())]


def polygon(poly):
    return [[float(x), float(y)] for x, y in np.asarray(poly, dtype=np.float64)]


def detector_alone(engine, path):
    """RapidOCR's TextDetector on the image the pipeline gives it, keeping each box's score.

    Replays TextDetector.__call__ (ch_ppocr_det/text_detect.py:47-63) step by step, because it drops
    the scores DBPostProcess computes (line 60); checks the boxes against TextDetector itself."""
    det = engine.text_det
    img = engine.load_img(str(path))
    raw_h, raw_w = img.shape[:2]
    img, ratio_h, ratio_w = engine.preprocess(img)
    op_record = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
    img, op_record = engine.maybe_add_letterbox(img, op_record)

    ori_shape = img.shape[0], img.shape[1]
    pre = det.get_preprocess(max(img.shape[0], img.shape[1]))
    tensor = pre(img)
    preds = det.infer(tensor)[0]
    boxes, scores = det.postprocess_op(preds, ori_shape)
    kept, kept_scores = [], []
    for box, score in zip(boxes, scores):  # filter_tag_det_res (text_detect.py:76-91), with the score
        box = det.order_points_clockwise(box)
        box = det.clip_det_res(box, ori_shape[0], ori_shape[1])
        if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
            continue
        kept.append(box)
        kept_scores.append(float(score))

    check, _ = det(img)
    assert np.array_equal(np.array(kept).reshape(-1, 4, 2), np.asarray(check).reshape(-1, 4, 2)), path

    entries = []
    if kept:
        orig = engine._get_origin_points(kept, op_record, raw_h, raw_w)
        for poly, score in zip(orig, kept_scores):
            entries.append({"polygon": polygon(poly), "box": poly_box(poly), "score": score})
    # Order the pipeline works in: sorted_boxes (main.py:221-244), as indices into "det".
    order = []
    if kept:
        for b in engine.sorted_boxes(np.array(kept)):
            order.append(next(i for i, k in enumerate(kept) if i not in order and np.array_equal(k, b)))
    stages = pipeline_stages(engine, img, [kept[i] for i in order], op_record, raw_h, raw_w) if kept else []
    return list(tensor.shape[2:]), entries, order, stages


def pipeline_stages(engine, img, sorted_boxes, op_record, raw_h, raw_w):
    """cls and rec results for every sorted det box, before the text_score filter (main.py:103-109)."""
    crops = engine.get_crop_img_list(img, sorted_boxes)
    crops, cls_res, _ = engine.text_cls(crops)
    rec_res, _ = engine.text_rec(crops, False)
    out = []
    for crop_in, (label, cls_score), (text, score) in zip(engine.get_crop_img_list(img, sorted_boxes),
                                                           cls_res, rec_res):
        out.append({"crop": [int(crop_in.shape[0]), int(crop_in.shape[1])],
                    "cls": [label, float(cls_score)], "rotated_180": bool("180" in label
                                                                      and cls_score > engine.text_cls.cls_thresh),
                    "text": text, "confidence": float(score),
                    "kept": float(score) >= engine.text_score})
    return out


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def config_used(engine):
    det = engine.text_det
    post = det.postprocess_op
    return {
        "limit_side_len": det.limit_side_len, "limit_type": det.limit_type,
        "mean": list(det.mean), "std": list(det.std),
        "thresh": post.thresh, "box_thresh": post.box_thresh, "unclip_ratio": post.unclip_ratio,
        "max_candidates": post.max_candidates, "use_dilation": post.dilation_kernel is not None,
        "dilation_kernel": post.dilation_kernel.tolist() if post.dilation_kernel is not None else None,
        "score_mode": post.score_mode, "min_size": post.min_size,
        "global": {"max_side_len": engine.max_side_len, "min_side_len": engine.min_side_len,
                   "min_height": engine.min_height, "width_height_ratio": engine.width_height_ratio,
                   "text_score": engine.text_score},
        "cls": {"cls_image_shape": engine.text_cls.cls_image_shape, "cls_batch_num": engine.text_cls.cls_batch_num,
                "cls_thresh": engine.text_cls.cls_thresh, "label_list": engine.text_cls.postprocess_op.label_list},
        "rec": {"rec_img_shape": engine.text_rec.rec_image_shape, "rec_batch_num": engine.text_rec.rec_batch_num},
    }


def main():
    version = dist_version("rapidocr_onnxruntime")
    if version != "1.4.4":
        sys.exit(f"make_ocr_fixtures.py: needs rapidocr-onnxruntime 1.4.4, found {version}")
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    random.seed(SEED)
    engine = RapidOCR()

    scenes, total, exact, loose = [], 0, 0, 0
    for scene in SCENES:
        img, rendered = render(scene, rng)
        path = OUT / scene[0]
        save(img, path)
        det_input, det, order, stages = detector_alone(engine, path)
        result, _ = engine(str(path))
        lines = []
        for poly, text, score in result or []:
            lines.append({"polygon": polygon(poly), "box": poly_box(poly), "text": text, "confidence": float(score)})
        kept = [s for s in stages if s["kept"]]
        assert [l["text"] for l in lines] == [s["text"] for s in kept], scene[0]
        for r in rendered:
            best = max(lines, key=lambda l: iou(l["box"], r["box"]), default=None)
            match = best if best is not None and iou(best["box"], r["box"]) > 0.3 else None
            r["ocr_text"] = match["text"] if match else None
            total += 1
            exact += match is not None and match["text"] == r["text"]
            loose += match is not None and match["text"].replace(" ", "") == r["text"].replace(" ", "")
        scenes.append({"file": scene[0], "width": scene[1], "height": scene[2],
                       "background": scene[3][0], "rendered": rendered, "det_input": det_input,
                       "det": det, "det_sorted": order, "stages": stages, "lines": lines})
        print(f"{scene[0]}: det input {det_input}, {len(det)} det boxes, {len(lines)} lines: "
              + "; ".join(l["text"] for l in lines))

    doc = {
        "generator": "models/make_ocr_fixtures.py",
        "rapidocr": version,
        "note": ("det: TextDetector alone, in its own (findContours) order, polygons in original-image pixels "
                 "(ints as DBPostProcess rounds them, clipped by clip_det_res); score: box_score_fast of the "
                 "box before unclip. det_sorted: indices into det in the order sorted_boxes puts them, which is "
                 "the order of stages. stages: cls and rec of every sorted det box before the text_score "
                 "filter; lines: what RapidOCR() returns (stages with confidence >= text_score). "
                 "rendered[].ocr_text: the text of the line whose box overlaps the rendered box best (IoU > 0.3)."),
        "config": config_used(engine),
        "match": {"rendered_lines": total, "exact": exact, "exact_ignoring_spaces": loose},
        "scenes": scenes,
    }
    (OUT / "rapidocr.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"exact matches {exact}/{total}, ignoring spaces {loose}/{total}")
    size = sum(p.stat().st_size for p in OUT.iterdir() if p.suffix in (".jpg", ".png"))
    print(f"images: {size} bytes")


if __name__ == "__main__":
    main()
