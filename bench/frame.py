#!/usr/bin/env python3
"""A deterministic 640x480 camera-like JPEG for `edgeinfer bench MODEL --image FILE`.

    python3 bench/frame.py [OUT.jpg]      (default /tmp/frame-640x480.jpg)

Smooth gradients, shapes, text and sensor-like noise, saved at quality 90 with 4:2:0 chroma
subsampling, as a webcam would: a JPEG that costs what a real frame costs to decode. Needs Pillow
and numpy (models/requirements.txt).
"""

import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/frame-640x480.jpg"
rng = np.random.default_rng(7)
y, x = np.mgrid[0:480, 0:640].astype(np.float32)
base = np.stack([x / 640 * 200 + 30, y / 480 * 180 + 40, (x + y) / 1120 * 150 + 60], axis=-1)
noise = rng.normal(0, 6, size=base.shape)
img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
draw = ImageDraw.Draw(img)
for i in range(12):
    x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    draw.ellipse([x0, y0, x0 + rng.integers(20, 120), y0 + rng.integers(20, 120)], fill=colour)
try:
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 36)
except OSError:
    font = ImageFont.load_default()
draw.text((40, 400), "Gate 3  2026-11-29 08:15", fill=(255, 255, 255), font=font)
img.save(out, "JPEG", quality=90, subsampling="4:2:0")
print(out)
