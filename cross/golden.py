#!/usr/bin/env python3
"""Golden inputs and output comparison for cross/check-qemu.sh.

The goldens are onnxruntime's outputs on x86 (tests/fixtures/<model>_golden.json, made by the
model's build script). An ARM build runs different kernels (NEON, or SVE under qemu's default
CPU), so its answers are compared with a tolerance per output, stated here next to the model.

    golden.py request MODEL                        the OIP JSON request holding every golden input
    golden.py compare MODEL ARM.json [X86.json]    checks ARM's response against onnxruntime and,
                                                   when given, the x86 edgeinfer response
    golden.py compare-pack GOLDEN.json ARM.json [X86.json]
                                                   the same for a pack model's random-weight copy
                                                   (tests/fixtures/<model>_random_golden.json): every
                                                   value within 1e-5 of the output's largest
    golden.py same A.json B.json TOLERANCE         two responses: same id, outputs and shapes, values
                                                   within TOLERANCE
    golden.py media-lines                          the OCR fixture lines check-qemu sends (index, file)
    golden.py compare-ocr MODEL LINE FORM ARM.json the recogniser's text, or the direction classifier's
                                                   label, equals onnxruntime's (tests/fixtures/pack/ocr.json)
    golden.py compare-vad ARM.json                 silero_vad's probabilities for the whole WAV within
                                                   1e-4 of onnxruntime's (tests/fixtures/pack/vad.json)
    golden.py compare-detect ppocr|scrfd FRAME ARM.json
                                                   a whole frame's lines (RapidOCR's) or faces (the scrfd
                                                   package's) found again (tests/fixtures/detect)

Standard library only: this runs on any build machine with Python 3.
"""

import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# model -> (input name, {output name: absolute tolerance}). digits: float32 MLP; its logits reach
# ~20 in magnitude, so 1e-4 is a few ulps; probabilities are softmax outputs in [0, 1].
MODELS = {
    "digits": ("pixels", {"logits": 1e-4, "probabilities": 1e-5}),
}


def golden(model):
    if model not in MODELS:
        sys.exit(f"golden.py: no golden data for model '{model}'; known: {', '.join(sorted(MODELS))}")
    return json.loads((FIXTURES / f"{model}_golden.json").read_text())


def request(model):
    input_name, outputs = MODELS[model]
    rows = golden(model)["inputs"]
    print(
        json.dumps(
            {
                "id": f"{model}-golden",
                "inputs": [
                    {
                        "name": input_name,
                        "datatype": "FP32",
                        "shape": [len(rows), len(rows[0])],
                        "data": [x for row in rows for x in row],
                    }
                ],
                "outputs": [{"name": name} for name in outputs],
            }
        )
    )


def flat(response, name):
    for output in response["outputs"]:
        if output["name"] == name:
            return output["data"]
    sys.exit(f"golden.py: the response has no output '{name}': {json.dumps(response)[:300]}")


def max_diff(a, b):
    if len(a) != len(b):
        return float("inf")
    return max(abs(x - y) for x, y in zip(a, b))


def compare(model, arm_path, x86_path=None):
    _, tolerances = MODELS[model]
    expected = golden(model)
    arm = json.loads(Path(arm_path).read_text())
    x86 = json.loads(Path(x86_path).read_text()) if x86_path else None
    failed = False
    for name, tolerance in tolerances.items():
        want = [x for row in expected[name] for x in row]
        got = flat(arm, name)
        diff = max_diff(got, want)
        line = f"{model}.{name}: {len(got)} values, max |arm - onnxruntime| = {diff:.3g}"
        if x86:
            line += f", max |arm - x86 edgeinfer| = {max_diff(got, flat(x86, name)):.3g}"
        ok = diff <= tolerance
        print(f"  {'ok  ' if ok else 'FAIL'} {line} (tolerance {tolerance:g})")
        failed |= not ok
    if "probabilities" in tolerances:
        probabilities = flat(arm, "probabilities")
        width = len(expected["probabilities"][0])
        argmax = [
            max(range(width), key=lambda j, i=i: probabilities[i * width + j])
            for i in range(len(probabilities) // width)
        ]
        want = [max(range(width), key=row.__getitem__) for row in expected["probabilities"]]
        same = sum(a == b for a, b in zip(argmax, want))
        ok = same == len(want)
        print(f"  {'ok  ' if ok else 'FAIL'} {model}: argmax equal to onnxruntime's on {same}/{len(want)}")
        failed |= not ok
    return 1 if failed else 0


def compare_pack(golden_path, arm_path, x86_path=None):
    expected = json.loads(Path(golden_path).read_text())
    case = next(c for c in expected["cases"] if c["transform"] == "none")
    arm = json.loads(Path(arm_path).read_text())
    x86 = json.loads(Path(x86_path).read_text()) if x86_path else None
    failed = False
    for name, want in case["outputs"].items():
        got = flat(arm, name)
        scale = max(abs(x) for x in want["data"])
        diff = max_diff(got, want["data"])
        line = f"{expected['model']}.{name}: {len(got)} values, max |arm - onnxruntime| = {diff:.3g} (largest {scale:.3g})"
        if x86:
            line += f", max |arm - x86 edgeinfer| = {max_diff(got, flat(x86, name)):.3g}"
        ok = diff <= 1e-5 * scale
        print(f"  {'ok  ' if ok else 'FAIL'} {line}")
        failed |= not ok
    return 1 if failed else 0


def same(a_path, b_path, tolerance):
    a = json.loads(Path(a_path).read_text())
    b = json.loads(Path(b_path).read_text())
    if a.get("id") != b.get("id") or [o["name"] for o in a["outputs"]] != [o["name"] for o in b["outputs"]]:
        print(f"  different responses: {json.dumps(a)[:200]} vs {json.dumps(b)[:200]}")
        return 1
    for x, y in zip(a["outputs"], b["outputs"]):
        if x["shape"] != y["shape"] or max_diff(x["data"], y["data"]) > float(tolerance):
            print(f"  output {x['name']} differs: {x['data'][:10]} vs {y['data'][:10]}")
            return 1
    return 0


# Two OCR lines (a long one with digits, a short one) in each form: enough to see a kernel or decoder go wrong.
OCR_LINES = (0, 11)


def media_lines():
    lines = json.loads((FIXTURES / "pack" / "ocr.json").read_text())["lines"]
    for index in OCR_LINES:
        for form in ("png", "jpeg", "png_180"):
            print(index, form, FIXTURES / "pack" / lines[index][form])


def compare_ocr(model, index, form, arm_path):
    line = json.loads((FIXTURES / "pack" / "ocr.json").read_text())["lines"][int(index)]
    arm = json.loads(Path(arm_path).read_text())
    if model == "ppocr_rec":
        want = line["rec"][form]["text"]
        got = flat(arm, "text")[0]
    else:
        want = line["cls"][form]["label"]
        got = flat(arm, "labels")[0]
    ok = got == want
    print(f"  {'ok  ' if ok else 'FAIL'} {model} line {index} {form}: {got!r} (onnxruntime {want!r})")
    return 0 if ok else 1


def compare_vad(arm_path):
    vad = json.loads((FIXTURES / "pack" / "vad.json").read_text())
    want = [p for chunk in vad["chunks"] for p in chunk["speech_probs"]]
    got = flat(json.loads(Path(arm_path).read_text()), "speech_probs")
    diff = max_diff(got, want)
    ok = diff <= 1e-4
    print(f"  {'ok  ' if ok else 'FAIL'} silero_vad: {len(got)} frames, max |arm - onnxruntime| = {diff:.3g} (tolerance 1e-4)")
    return 0 if ok else 1


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def compare_detect(model, frame, arm_path):
    """ppocr: every line RapidOCR read, read the same (spaces aside) in a box of IoU >= 0.8;
    scrfd: every face the scrfd package found, in a box of IoU >= 0.95, its score within 1e-3."""
    arm = json.loads(Path(arm_path).read_text())
    boxes = flat(arm, "boxes")
    boxes = [boxes[i:i + 4] for i in range(0, len(boxes), 4)]
    failed = 0
    if model == "ppocr":
        scenes = json.loads((FIXTURES / "detect" / "ocr" / "rapidocr.json").read_text())["scenes"]
        expected = next(s for s in scenes if s["file"] == frame)["lines"]
        texts = flat(arm, "text")
        for line in expected:
            best = max(range(len(boxes)), key=lambda i: iou(line["box"], boxes[i]), default=None)
            got = texts[best] if best is not None else None
            ok = best is not None and iou(line["box"], boxes[best]) >= 0.8 and \
                got.replace(" ", "") == line["text"].replace(" ", "")
            failed |= not ok
            print(f"  {'ok  ' if ok else 'FAIL'} ppocr {frame}: {got!r} (RapidOCR {line['text']!r})")
    else:
        images = json.loads((FIXTURES / "detect" / "scrfd" / "reference.json").read_text())["images"]
        expected = next(i for i in images if i["file"] == frame)["faces"]
        scores = flat(arm, "scores")
        ok = len(boxes) == len(expected)
        for face in expected:
            best = max(range(len(boxes)), key=lambda i: iou(face["box"], boxes[i]), default=None)
            ok = ok and best is not None and iou(face["box"], boxes[best]) >= 0.95 and \
                abs(scores[best] - face["score"]) <= 1e-3
        failed |= not ok
        print(f"  {'ok  ' if ok else 'FAIL'} scrfd {frame}: {len(boxes)} faces (the scrfd package {len(expected)})")
    return 1 if failed else 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "request":
        golden(argv[1])
        request(argv[1])
        return 0
    if len(argv) in (3, 4) and argv[0] == "compare":
        golden(argv[1])
        return compare(*argv[1:])
    if len(argv) in (3, 4) and argv[0] == "compare-pack":
        return compare_pack(*argv[1:])
    if len(argv) == 4 and argv[0] == "same":
        return same(*argv[1:])
    if argv == ["media-lines"]:
        return media_lines()
    if len(argv) == 5 and argv[0] == "compare-ocr":
        return compare_ocr(*argv[1:])
    if len(argv) == 4 and argv[0] == "compare-detect":
        return compare_detect(*argv[1:])
    if len(argv) == 2 and argv[0] == "compare-vad":
        return compare_vad(argv[1])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
