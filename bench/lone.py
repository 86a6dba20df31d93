#!/usr/bin/env python3
"""One request alone vs a full queue, with and without requests.lone_request_threads.

The same release binary serves one model twice in turn from a private Mosquitto: once with
`lone_request_threads = 1` (every request on its worker's core, the behaviour before it existed)
and once with the default (0: a request computed alone spreads over every core). Each is driven
by `edgeinfer loadgen --binary` with 1 request in flight (what a camera board sends: one frame,
then wait) and with 8 in flight (a full queue, where every request should keep to one core).
Rounds alternate the two settings so that they share whatever else the machine is doing.

    python3 bench/lone.py --models squeezenet resnet50 --seconds 10 --rounds 2

Needs the release binary (see bench/README.md) and the pack (python3 models/fetch.py).
Prints one markdown table; the daemons' logs stay in the temporary directory printed at start.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, default_edgeinfer, log, private_broker  # noqa: E402
from pipeline import request_file  # noqa: E402


def serve(args, workdir, model, lone, tag):
    config = os.path.join(workdir, f"{tag}.toml")
    with open(config, "w") as f:
        f.write(f'[broker]\nurl = "{args.broker}"\n\n[topics]\ndevice = "bench"\n\n'
                f'[models]\nrepository = "{os.path.join(ROOT, "models")}"\n\n'
                f"[requests]\nlone_request_threads = {lone}\n")
    argv = [args.edgeinfer, "serve", "--config", config]
    server = Server(argv, r"connected to broker", os.path.join(workdir, f"{tag}.log"))
    server.wait_ready(60)
    return server


def loadgen(args, model, request, in_flight):
    argv = [args.edgeinfer, "loadgen", model, "--broker", args.broker, "--device", "bench", "-i", request,
            "--binary", "--json", "--concurrency", str(in_flight), "--seconds", str(args.seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    result = json.loads(done.stdout)
    bad = {k: v for k, v in result["outcomes"].items() if k != "ok"}
    if bad:
        raise RuntimeError(f"{model}, {in_flight} in flight: not every answer was ok: {bad}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet", "resnet50"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--edgeinfer", default=default_edgeinfer())
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="edgeinfer-lone-")
    log(f"working in {workdir}")
    broker, args.broker = private_broker(args.mosquitto, workdir)
    rows = []
    try:
        for model in args.models:
            example = os.path.join(ROOT, "models", model, "example-request.json")
            fixture = os.path.join(ROOT, "tests", "fixtures", f"{model}_random_input.npy")
            request = request_file(model, workdir) if os.path.exists(fixture) else example
            for round_ in range(args.rounds):
                for lone, label in ((1, "1 (off)"), (0, "0 (all cores)")):
                    server = serve(args, workdir, model, lone, f"{model}-{round_}-{lone}")
                    one = loadgen(args, model, request, 1)
                    eight = loadgen(args, model, request, 8)
                    rss = server.stop()
                    log(f"  {model} lone_request_threads={label}: alone p50 {one['p50_ms']:.1f} ms, "
                        f"8 in flight {eight['throughput_per_s']:.1f}/s")
                    rows.append((model, label, round_ + 1, one, eight, rss))
    finally:
        broker.terminate()
        broker.wait()
    print("| model | lone_request_threads | round | 1 in flight p50 / p99 ms | 1 in flight /s "
          "| 8 in flight /s | 8 in flight p50 ms | peak RSS MiB |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for model, label, round_, one, eight, rss in rows:
        print(f"| {model} | {label} | {round_} | {one['p50_ms']:.1f} / {one['p99_ms']:.1f} "
              f"| {one['throughput_per_s']:.1f} | {eight['throughput_per_s']:.1f} | {eight['p50_ms']:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
