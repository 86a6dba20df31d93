#!/usr/bin/env python3
"""Whole frames, side by side in one run: the daemon's `ppocr` and `scrfd` against the peer a user
would run instead (bench/peer_detect.py: RapidOCR's own pipeline and the scrfd package, on
onnxruntime with its default threads), both behind one private Mosquitto, driven by the same
`edgeinfer loadgen` with the frame file as the payload (Content Type image/jpeg or image/png).

For each frame: per-frame latency of one frame at a time (p50, p99), frames/s with 2 in flight
(the machine's 2 cores), and each server's peak RSS over the whole run.

    python3 bench/detect.py [--edgeinfer PATH] [--python /tmp/fixtures-venv/bin/python] [--seconds 10]

The peer's Python needs rapidocr-onnxruntime, the scrfd sdist and paho-mqtt (models/requirements-fixtures.txt).
"""

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import ROOT, Server, default_edgeinfer, loadgen, log, private_broker  # noqa: E402

FRAMES = [
    ("ppocr", "tests/fixtures/detect/ocr/scene-02.png", "640x480 PNG, 5 lines"),
    ("ppocr", "tests/fixtures/detect/ocr/scene-01.jpg", "1280x720 JPEG, 6 lines"),
    ("ppocr", "tests/fixtures/detect/ocr/scene-03.jpg", "1920x1080 JPEG, 6 lines"),
    ("scrfd", "tests/fixtures/detect/scrfd/faces-02.jpg", "1280x720 JPEG, 4 faces"),
    ("scrfd", "tests/fixtures/detect/scrfd/faces-03.jpg", "1920x1080 JPEG, 29 faces"),
]
MODELS = ["ppocr_det", "ppocr_cls", "ppocr_rec", "ppocr", "scrfd"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edgeinfer", default=default_edgeinfer())
    parser.add_argument("--python", default="/tmp/fixtures-venv/bin/python", help="the peer's Python")
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="edgeinfer-detect-")
    broker, args.broker = private_broker(args.mosquitto, work)
    port = int(args.broker.rsplit(":", 1)[1])
    repo = os.path.join(work, "repo")
    for model in MODELS:
        shutil.copytree(os.path.join(ROOT, "models", model), os.path.join(repo, model))
    rows = []
    try:
        for server in ("edgeinfer", "peer"):
            device = f"bench-detect-{server}"
            if server == "edgeinfer":
                argv = [args.edgeinfer, "serve", "--broker", args.broker, "--device", device, "--models", repo]
                ready = r"connected to broker"
            else:
                argv = [args.python, os.path.join(HERE, "peer_detect.py"), "--broker-port", str(port), "--device", device]
                ready = r"^ready"
            proc = Server(argv, ready, os.path.join(work, f"{server}.log"))
            proc.wait_ready(120)
            try:
                for model, frame, what in FRAMES:
                    common = ("--timeout-ms", 60000)
                    # The first frame of a size makes the daemon's plan for it: not measured.
                    loadgen(args, model, frame, device, "--wait-ready", 60, "--seconds", 1, *common)
                    seq = loadgen(args, model, frame, device, "--concurrency", 1, "--seconds", args.seconds, *common)
                    load = loadgen(args, model, frame, device, "--concurrency", 2, "--seconds", args.seconds, *common)
                    bad = {k: v for run in (seq, load) for k, v in run["outcomes"].items() if k != "ok"}
                    rows.append((server, model, what, seq["p50_ms"], seq["p99_ms"], load["throughput_per_s"], bad))
                    log(f"  {server} {model} {what}: p50 {seq['p50_ms']:.1f} ms, {load['throughput_per_s']:.2f} frames/s")
            finally:
                rss = proc.stop()
            rows.append((server, "peak RSS", f"{rss:.0f} MB", None, None, None, {}))
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)

    print("| server | model | frame | one frame p50 (ms) | p99 (ms) | 2 in flight (frames/s) | outcomes |")
    print("|---|---|---|--:|--:|--:|---|")
    for server, model, what, p50, p99, tput, bad in rows:
        if p50 is None:
            print(f"| {server} | {model} | {what} | | | | |")
            continue
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) or "all ok"
        print(f"| {server} | {model} | {what} | {p50:.1f} | {p99:.1f} | {tput:.2f} | {outcomes} |")


if __name__ == "__main__":
    sys.exit(main())
