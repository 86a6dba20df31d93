#!/usr/bin/env python3
"""The request pipeline under load, on a real model: the issue-3 targets beyond digits.

Starts a private Mosquitto on a free loopback port (TCP_NODELAY on, no persistence) and measures, with
edgeinfer's own `bench` and `loadgen` (binary tensors, MQTT v5, QoS 1):

  engine        `edgeinfer bench MODEL --threads 1` and `--threads 2`: what the engine alone does
  scaling       the daemon with 2 workers, closed loop at 2/4/8 in flight: end-to-end throughput against
                2x the engine's single-thread throughput (target: >= 90 %)
  latency       open loop at 80 % of that rate: p99 against p50 (target: p99 <= 2x p50)
  batching      the same closed loop with [serving] max_batch_size = 4 (max_queue_delay_us = 0 and 2000)
  overload      OVERLOAD_MODEL at 10x its sustainable rate (closed-loop throughput) for 30 s, open loop:
                every request must get exactly one reply (a result, `busy` or `deadline_exceeded`; no
                timeouts), and the daemon's RSS, sampled every 100 ms, must stay within 1.5x its idle RSS

The model pack must be fetched (python3 models/fetch.py). Requests are the random-input fixtures
(tests/fixtures/<model>_random_input.npy) turned into OIP JSON; loadgen sends them as binary tensors.
Prints markdown on stdout, progress on stderr; --raw FILE keeps every loadgen result.

  python3 bench/pipeline.py [--model squeezenet] [--overload-model resnet50] [--seconds 10]
                            [--overload-seconds 30] [--edgeinfer PATH] [--raw FILE.json]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, default_edgeinfer, log, private_broker  # noqa: E402


def vm_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def request_file(model, workdir):
    """An OIP JSON request holding the model's fixture input."""
    import numpy as np

    toml = open(os.path.join(ROOT, "models", model, "model.toml")).read()
    name = next(line.split('"')[1] for line in toml.splitlines() if line.startswith("name"))
    x = np.load(os.path.join(ROOT, "tests", "fixtures", f"{model}_random_input.npy"))
    path = os.path.join(workdir, f"{model}.json")
    with open(path, "w") as f:
        json.dump({"id": f"{model}-bench", "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}, f)
    return path


class Bench:
    def __init__(self, args, workdir):
        self.args, self.workdir, self.raw = args, workdir, []

    def engine(self, model, threads):
        out = subprocess.run([self.args.edgeinfer, "bench", model, "--models", "models", "--threads", str(threads),
                              "--json"], capture_output=True, text=True, cwd=ROOT, check=True)
        return json.loads(out.stdout)

    def serve(self, model, serving=""):
        repo = os.path.join(self.workdir, f"repo-{model}-{len(self.raw)}")
        shutil.copytree(os.path.join(ROOT, "models", model), os.path.join(repo, model))
        if serving:
            with open(os.path.join(repo, model, "model.toml"), "a") as f:
                f.write("\n[serving]\n" + serving + "\n")
        argv = [self.args.edgeinfer, "serve", "--broker", self.args.broker, "--device", "bench", "--models", repo]
        server = Server(argv, r"connected to broker", os.path.join(self.workdir, f"serve-{len(self.raw)}.log"))
        server.wait_ready(60)
        return server

    def loadgen(self, model, request, label, *extra):
        argv = [self.args.edgeinfer, "loadgen", model, "--broker", self.args.broker, "--device", "bench", "-i",
                request, "--binary", "--json", *map(str, extra)]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        result = json.loads(done.stdout)
        result["label"] = label
        self.raw.append(result)
        log(f"  {label}: {result['throughput_per_s']:.1f}/s p50 {result['p50_ms']:.1f} ms "
            f"p99 {result['p99_ms']:.1f} ms outcomes {result['outcomes']}")
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="squeezenet")
    parser.add_argument("--overload-model", default="resnet50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--edgeinfer", default=default_edgeinfer())
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--raw")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="edgeinfer-pipeline-")
    log(f"working in {workdir}")
    broker, args.broker = private_broker(args.mosquitto, workdir)
    bench = Bench(args, workdir)
    out = []
    try:
        model, seconds = args.model, args.seconds
        request = request_file(model, workdir)
        one, two = bench.engine(model, 1), bench.engine(model, 2)
        single = one["single_thread"]["per_s"]
        out.append(f"## {model}: engine alone (`edgeinfer bench {model} --threads 1|2`)\n")
        out.append(f"load+optimise {one['load_ms']:.0f} ms; single thread p50 {one['single_thread']['p50_ms']:.2f} ms, "
                   f"{single:.1f}/s; 2 threads {two['throughput_per_s']:.1f}/s; peak RSS {one['peak_rss_mb']:.1f} MB\n")

        out.append(f"## {model} through the daemon (2 workers), closed loop, {seconds:.0f} s each\n")
        out.append("| setting | in flight | answers/s | vs 2x engine 1-thread | p50 ms | p99 ms | outcomes |")
        out.append("|---|--:|--:|--:|--:|--:|---|")
        settings = [("batching off", ""), ("max_batch_size 4, delay 0", "max_batch_size = 4"),
                    ("max_batch_size 4, delay 2 ms", "max_batch_size = 4\nmax_queue_delay_us = 2000")]
        best = 0.0
        for label, serving in settings:
            server = bench.serve(model, serving)
            try:
                for inflight in (2, 4, 8) if not serving else (8,):
                    r = bench.loadgen(model, request, f"{label} c={inflight}", "--concurrency", inflight,
                                      "--seconds", seconds)
                    if not serving:
                        best = max(best, r["throughput_per_s"])
                    out.append(f"| {label} | {inflight} | {r['throughput_per_s']:.1f} | "
                               f"{100 * r['throughput_per_s'] / (2 * single):.0f} % | {r['p50_ms']:.1f} | "
                               f"{r['p99_ms']:.1f} | {r['outcomes']} |")
                if not serving:
                    rate = 0.8 * 2 * single
                    r = bench.loadgen(model, request, f"open loop {rate:.0f}/s", "--rate", f"{rate:.1f}",
                                      "--seconds", seconds)
                    latency_line = (f"\nOpen loop at 80 % of 2x the engine's single-thread rate ({rate:.1f} req/s, "
                                    f"{seconds:.0f} s): {r['throughput_per_s']:.1f} answers/s, p50 {r['p50_ms']:.1f} ms, "
                                    f"p99 {r['p99_ms']:.1f} ms (p99/p50 = {r['p99_ms'] / r['p50_ms']:.2f}), "
                                    f"outcomes {r['outcomes']}\n")
            finally:
                server.stop()
        out.append(latency_line)
        out.append(f"Best end-to-end throughput without batching: {best:.1f}/s = "
                   f"{100 * best / (2 * single):.0f} % of 2x the engine's single-thread {single:.1f}/s.\n")

        heavy = args.overload_model
        request = request_file(heavy, workdir)
        server = bench.serve(heavy)
        try:
            time.sleep(3)  # the inference threads' own warm-up runs finish after "connected"
            idle = vm_rss_mb(server.proc.pid)
            sustainable = bench.loadgen(heavy, request, f"{heavy} sustainable", "--concurrency", 4, "--seconds",
                                        seconds)["throughput_per_s"]
            idle_after = vm_rss_mb(server.proc.pid)
            samples, stop = [], threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append(vm_rss_mb(server.proc.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            rate = 10 * sustainable
            r = bench.loadgen(heavy, request, f"{heavy} overload {rate:.0f}/s", "--rate", f"{rate:.1f}", "--seconds",
                              args.overload_seconds, "--timeout-ms", 10_000)
            stop.set()
            sampler.join()
        finally:
            server.stop()
        # The final counts, published (retained) at shutdown.
        port = args.broker.rsplit(":", 1)[1]
        stats = subprocess.run(["mosquitto_sub", "-p", port, "-t", "edgeinfer/bench/stats", "-C", "1", "-W", "5"],
                               capture_output=True, text=True).stdout.strip()
        replies = sum(v for k, v in r["outcomes"].items() if k not in ("timeout", "closed"))
        out.append(f"## Overload: {heavy} at 10x its sustainable rate for {args.overload_seconds:.0f} s\n")
        out.append(f"- sustainable (closed loop, 4 in flight): {sustainable:.1f}/s; offered {rate:.1f}/s, open loop")
        out.append(f"- sent {r['sent']}, replies {replies}, outcomes {r['outcomes']}")
        out.append(f"- RSS: idle {idle:.1f} MB (after the sustainable run {idle_after:.1f} MB), peak under overload "
                   f"{max(samples):.1f} MB = {max(samples) / idle:.2f}x idle ({len(samples)} samples)")
        out.append(f"- the daemon's own counts (retained stats, final, published at shutdown): `{stats}`\n")
    finally:
        broker.terminate()
        if args.raw:
            with open(args.raw, "w") as f:
                json.dump(bench.raw, f, indent=1)
    print("\n".join(out))


if __name__ == "__main__":
    main()
