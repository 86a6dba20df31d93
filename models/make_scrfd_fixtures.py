#!/usr/bin/env python3
"""Reference fixtures for SCRFD face detection (issue 12): tests/fixtures/detect/scrfd/.

Runs in a venv, not in the system Python (whose numpy/onnx/onnxruntime/pillow are pinned by
models/requirements.txt and must stay as they are), with scikit-image and the scrfd package
installed from the same pinned sdist models/fetch.py downloads:

    python3 models/fetch.py --skip-random      # models/scrfd/model.onnx, models/.staged/scrfd/images/
    python3 -m venv /tmp/fixtures-venv
    /tmp/fixtures-venv/bin/pip install -r models/requirements-fixtures.txt
    /tmp/fixtures-venv/bin/pip install --no-deps ~/.cache/edgeinfer-models/wheels/scrfd-0.3.0.tar.gz
    /tmp/fixtures-venv/bin/python models/make_scrfd_fixtures.py

Composes the scenes (seeded, deterministic) from skimage.data's photos with faces (astronaut,
camera, lfw_subset; all bundled with scikit-image, nothing is downloaded) and the scrfd sdist's
photos (solvay_conference_1927.jpg, newton.png, gauss.png), saves them as JPEG quality 90, decodes
each saved file again with Pillow (.convert("RGB")) and runs the scrfd package's own detector
(SCRFD.from_path(models/scrfd/model.onnx), onnxruntime CPU, its default Threshold) on it. Writes
tests/fixtures/detect/scrfd/reference.json. Run once by a developer; the outputs are committed and CI
never runs this. tests/fixtures/detect/README.md explains what the package does.
"""

import json
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from skimage import data as skdata

from scrfd import SCRFD, Threshold

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "scrfd" / "model.onnx"
PHOTOS = REPO / "models" / ".staged" / "scrfd" / "images"
OUT = REPO / "tests" / "fixtures" / "detect" / "scrfd"
SEED = 12


def photo(name):
    if name == "astronaut":
        return Image.fromarray(skdata.astronaut(), "RGB")
    if name == "camera":
        return Image.fromarray(skdata.camera(), "L").convert("RGB")
    if name.startswith("lfw"):
        faces = skdata.lfw_subset()  # 200 x 25 x 25 floats in [0, 1]: 100 faces, then 100 non-faces
        return Image.fromarray(np.rint(faces[int(name[3:])] * 255).astype(np.uint8), "L").convert("RGB")
    path = PHOTOS / name
    if not path.is_file():
        sys.exit(f"make_scrfd_fixtures.py: {path} is missing: run python3 models/fetch.py first")
    return Image.open(path).convert("RGB")


def background(width, height, spec, rng):
    if spec[0] == "solid":
        arr = np.broadcast_to(np.array(spec[1], np.float64), (height, width, 3))
    elif spec[0] == "noise":
        arr = np.array(spec[1], np.float64) + rng.normal(0.0, spec[2], (height, width, 3))
    elif spec[0] == "vgrad":
        y = np.linspace(0.0, 1.0, height)[:, None, None]
        a, b = np.array(spec[1], np.float64), np.array(spec[2], np.float64)
        arr = np.broadcast_to(a + (b - a) * y, (height, width, 3))
    else:
        raise ValueError(spec)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


# (file, width, height, background, [(photo, crop box or None, pasted width, x, y, mirrored)])
SCENES = [
    ("faces-01.jpg", 640, 480, ("noise", (128, 128, 128), 12), [
        ("astronaut", None, 400, 120, 40, False),
    ]),
    ("faces-02.jpg", 1280, 720, ("solid", (200, 210, 220)), [
        ("astronaut", (100, 0, 400, 300), 360, 40, 200, False),
        ("astronaut", (100, 0, 400, 300), 200, 520, 60, True),
        ("astronaut", (100, 0, 400, 300), 110, 860, 420, False),
        ("camera", (180, 20, 320, 160), 180, 1040, 120, False),
    ]),
    ("faces-03.jpg", 1920, 1080, ("solid", (40, 40, 40)), [
        ("solvay_conference_1927.jpg", None, 1440, 240, 20, False),
    ]),
    ("faces-04.jpg", 1280, 720, ("vgrad", (230, 230, 210), (120, 120, 100)), [
        ("newton.png", None, 560, 40, 200, False),
        ("gauss.png", (0, 0, 1024, 1100), 420, 760, 40, False),
    ]),
    ("faces-05.jpg", 640, 480, ("noise", (90, 120, 90), 20), [
        ("lfw0", None, 120, 40, 60, False),
        ("lfw1", None, 120, 260, 60, False),
        ("lfw2", None, 120, 480, 60, False),
        ("camera", None, 200, 220, 260, True),
    ]),
    ("faces-06.jpg", 720, 1280, ("solid", (250, 250, 250)), [
        ("astronaut", None, 640, 40, 40, False),
        ("newton.png", (150, 0, 650, 432), 500, 110, 760, False),
    ]),
    ("faces-07.jpg", 1280, 720, ("noise", (150, 140, 130), 15), []),
]


def compose(scene, rng):
    name, width, height, bg, parts = scene
    img = background(width, height, bg, rng)
    placed = []
    for src, crop, pw, x, y, mirrored in parts:
        p = photo(src)
        if crop is not None:
            p = p.crop(crop)
        ph = round(p.height * pw / p.width)
        p = p.resize((pw, ph), Image.Resampling.LANCZOS)
        if mirrored:
            p = p.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert x + pw <= width and y + ph <= height, (name, src, x + pw, y + ph)
        img.paste(p, (x, y))
        placed.append({"photo": src, "crop": list(crop) if crop else None, "box": [x, y, x + pw, y + ph],
                       "mirrored": mirrored})
    return img, placed


def main():
    version = dist_version("scrfd")
    if version != "0.3.0":
        sys.exit(f"make_scrfd_fixtures.py: needs scrfd 0.3.0, found {version}")
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    detector = SCRFD.from_path(str(MODEL), providers=["CPUExecutionProvider"])
    session = detector._inner.session
    threshold = Threshold()

    images = []
    for scene in SCENES:
        img, placed = compose(scene, rng)
        path = OUT / scene[0]
        img.save(path, quality=90)
        image = Image.open(path).convert("RGB")
        faces = detector.detect(image, threshold=threshold)
        ratio = image.height / image.width
        if ratio > 1.0:
            new_h, new_w = 640, max(1, int(640 / ratio))
        else:
            new_w, new_h = 640, max(1, int(640 * ratio))
        images.append({
            "file": scene[0], "width": image.width, "height": image.height, "placed": placed,
            "resized": [new_w, new_h], "det_scale": image.height / new_h,
            "faces": [{
                "box": [f.bbox.upper_left.x, f.bbox.upper_left.y, f.bbox.lower_right.x, f.bbox.lower_right.y],
                "score": f.probability,
                "keypoints": [[k.x, k.y] for k in (f.keypoints.left_eye, f.keypoints.right_eye, f.keypoints.nose,
                                                     f.keypoints.left_mouth, f.keypoints.right_mouth)],
            } for f in faces],
        })
        print(f"{scene[0]}: {image.width}x{image.height}, {len(faces)} faces, scores "
              + " ".join(f"{f.probability:.3f}" for f in faces))

    doc = {
        "generator": "models/make_scrfd_fixtures.py",
        "scrfd": version,
        "onnxruntime": ort.__version__,
        "model": "models/scrfd/model.onnx (scrfd-0.3.0.tar.gz: scrfd-0.3.0/models/scrfd.onnx)",
        "params": {
            "score_threshold": threshold.probability, "score_compare": ">=",
            "nms_threshold": threshold.nms, "nms_suppress": "IoU > nms_threshold, areas with +1 (pixel-inclusive)",
            "input_size": [640, 640], "input_name": session.get_inputs()[0].name,
            "mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0], "normalise": "(pixel - 127.5) / 128",
            "color_order": "RGB", "layout": "NCHW",
            "letterbox": "aspect kept, long side 640 (short side int(), truncated), placed top-left, zero padding "
                         "right/bottom",
            "interpolation": "nearest (PIL Image.resize, Resampling.NEAREST)",
            "det_scale": "image.height / resized height, for x and y alike",
            "strides": [8, 16, 32], "anchors_per_location": 2,
        },
        "outputs": [{"name": o.name, "shape": o.shape} for o in session.get_outputs()],
        "note": "faces in the package's order: score descending (after NMS); boxes [x0, y0, x1, y1] and keypoints "
                "(left eye, right eye, nose, left mouth, right mouth) in original-image pixels, not clipped. "
                "placed: where the photos were pasted, for eyeballing only.",
        "images": images,
    }
    (OUT / "reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum(p.stat().st_size for p in OUT.glob("*.jpg"))
    print(f"images: {size} bytes; outputs: {doc['outputs']}")


if __name__ == "__main__":
    main()
