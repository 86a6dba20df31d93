#!/usr/bin/env python3
"""edgeinfer vs. the Python onnxruntime+paho peer (bench/peer.py), side by side, over one private broker.

Starts its own Mosquitto on a free loopback port (TCP_NODELAY on, no persistence), then for each model
runs each server IN TURN (never both at once), each time as a fresh process serving only that model:

  1. start-to-first-answer: the server is spawned, and at once `edgeinfer loadgen --wait-ready 30` retries
     one request until it is answered; the figure is loadgen's first_answer_unix_ms minus the spawn time.
     Repeated --starts times (a fresh server each time), the median is reported.
  2. sequential latency: `loadgen --concurrency 1 --seconds SEQ` (p50, p99);
  3. closed-loop throughput: `loadgen --concurrency 64 --seconds LOAD` (answers/s, p50, p99);
  4. peak RSS: VmHWM of the server process from /proc/<pid>/status, read just before SIGTERM.

The client is edgeinfer's own loadgen for both servers (MQTT v5, QoS 1 requests, Response Topic and
Correlation Data), so both get the same load. Every loadgen run must have only "ok" outcomes; anything
else is shown in the table's last column and makes the script exit 1.

Prints one markdown table on stdout; progress goes to stderr.

  python3 bench/compare.py [--models digits ...] [--seq-seconds 5] [--load-seconds 10] [--concurrency 64]
                           [--edgeinfer PATH] [--threads 1] [--starts 3] [--raw FILE.json]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def private_broker(mosquitto, workdir):
    """A Mosquitto of the bench's own on a free loopback port (nodelay, no persistence): the process
    and its URL."""
    port = free_port()
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n")
    broker = subprocess.Popen([mosquitto, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return broker, f"mqtt://127.0.0.1:{port}"


def default_edgeinfer():
    for path in ("/tmp/edgeinfer-release/release/edgeinfer", os.path.join(ROOT, "target/release/edgeinfer")):
        if os.access(path, os.X_OK):
            return path
    return "/tmp/edgeinfer-release/release/edgeinfer"


def vm_hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB -> MB (MiB)
    return float("nan")


class Server:
    """A server process whose output lines are timestamped, to note when it says it is ready."""

    def __init__(self, argv, ready_pattern, logfile):
        self.ready_at = None
        self.spawned_ms = time.time() * 1000.0
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=ROOT
        )
        self.pattern = re.compile(ready_pattern)
        self.logfile = logfile
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        with open(self.logfile, "a") as out:
            for line in self.proc.stdout:
                if self.ready_at is None and self.pattern.search(line):
                    self.ready_at = time.time() * 1000.0
                out.write(line)

    def wait_ready(self, seconds):
        """Waits until the server has printed its ready line; raises if it exits or takes longer."""
        deadline = time.time() + seconds
        while self.ready_at is None:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the server did not come up; see {self.logfile}")
            time.sleep(0.05)

    def stop(self):
        """Peak RSS in MB, read just before SIGTERM."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited early with {self.proc.returncode}; see {self.logfile}")
        hwm = vm_hwm_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log(f"  pid {self.proc.pid} ignored SIGTERM for 15 s; killing it")
            self.proc.kill()
            self.proc.wait()
        return hwm


def loadgen(args, model, request, device, *extra):
    argv = [args.edgeinfer, "loadgen", model, "--broker", args.broker, "--device", device, "-i", request, "--json",
            *map(str, extra)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def not_ok(result, label):
    bad = {k: v for k, v in result["outcomes"].items() if k != "ok"}
    return [f"{label}: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))] if bad else []


def measure(args, server, model, request, workdir):
    """Runs one (server, model) pair; returns a dict of figures."""
    repo = os.path.join(workdir, f"repo-{model}")
    if not os.path.isdir(repo):
        # a copy, not a symlink: edgeinfer's repository scan skips symlinked model directories
        shutil.copytree(os.path.join(args.models_dir, model), os.path.join(repo, model))
    device = f"bench-{server}"
    if server == "edgeinfer":
        argv = [args.edgeinfer, "serve", "--broker", args.broker, "--device", device, "--models", repo]
        ready_pattern = r"connected to broker"
    else:
        argv = [sys.executable, os.path.join(HERE, "peer.py"), "--broker-port", str(args.port), "--device", device,
                "--models", repo, "--threads", str(args.threads)]
        ready_pattern = r"^ready"
    logfile = os.path.join(workdir, f"{server}-{model}.log")
    problems, starts, ready_lines, runs = [], [], [], {}
    for attempt in range(args.starts):
        proc = Server(argv, ready_pattern, logfile)
        try:
            first = loadgen(args, model, request, device, "--wait-ready", 30, "--concurrency", 1, "--seconds",
                            args.start_seconds)
        except BaseException:
            proc.stop()
            raise
        starts.append(first["first_answer_unix_ms"] - proc.spawned_ms)
        if proc.ready_at is not None:
            ready_lines.append(proc.ready_at - proc.spawned_ms)
        problems += not_ok(first, "start")
        runs.setdefault("start", []).append(first)
        log(f"  {server}/{model}: start {attempt + 1}/{args.starts}: first answer after {starts[-1]:.0f} ms")
        if attempt + 1 < args.starts:
            proc.stop()
    try:
        seq = loadgen(args, model, request, device, "--concurrency", 1, "--seconds", args.seq_seconds)
        log(f"  {server}/{model}: sequential p50 {seq['p50_ms']:.3f} ms p99 {seq['p99_ms']:.3f} ms")
        load = loadgen(args, model, request, device, "--concurrency", args.concurrency, "--seconds",
                       args.load_seconds)
    except BaseException:
        proc.stop()
        raise
    problems += not_ok(seq, "sequential")
    problems += not_ok(load, "closed-loop")
    log(f"  {server}/{model}: closed loop {load['throughput_per_s']:.0f}/s p50 {load['p50_ms']:.3f} ms")
    rss = proc.stop()
    runs.update(sequential=seq, closed_loop=load)
    return {
        "server": server, "model": model, "start_ms": statistics.median(starts), "starts_ms": starts,
        "ready_line_ms": statistics.median(ready_lines) if ready_lines else None,
        "seq_p50": seq["p50_ms"], "seq_p99": seq["p99_ms"], "tput": load["throughput_per_s"],
        "load_p50": load["p50_ms"], "load_p99": load["p99_ms"], "rss_mb": rss, "problems": problems, "runs": runs,
    }


def table(rows, args):
    out = [
        f"| server | model | start to first answer (ms) | server says ready (ms) | sequential p50 (ms) "
        f"| sequential p99 (ms) | closed loop c={args.concurrency} (req/s) | closed-loop p50 (ms) "
        f"| closed-loop p99 (ms) | peak RSS (MB) | outcomes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        ready = f"{r['ready_line_ms']:.0f}" if r["ready_line_ms"] is not None else "-"
        out.append(
            f"| {r['server']} | {r['model']} | {r['start_ms']:.0f} | {ready} | {r['seq_p50']:.3f} | {r['seq_p99']:.3f} "
            f"| {r['tput']:,.0f} | {r['load_p50']:.3f} | {r['load_p99']:.3f} | {r['rss_mb']:.1f} "
            f"| {'; '.join(r['problems']) or 'all ok'} |"
        )
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description="edgeinfer vs. bench/peer.py over a private Mosquitto")
    parser.add_argument("--models", nargs="+", default=["digits"],
                        help="model names in --models-dir; NAME=REQUEST.json to pick the request "
                             "(default request: <models-dir>/NAME/example-request.json)")
    parser.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    parser.add_argument("--edgeinfer", default=default_edgeinfer(), help="the release binary")
    parser.add_argument("--servers", nargs="+", default=["edgeinfer", "peer"], choices=["edgeinfer", "peer"])
    parser.add_argument("--seq-seconds", type=float, default=5.0)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--start-seconds", type=float, default=1.0,
                        help="--seconds of the loadgen --wait-ready run (a short warm-up after the first answer)")
    parser.add_argument("--starts", type=int, default=3, help="fresh starts per server and model (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="the peer's onnxruntime intra_op_num_threads")
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--raw", help="also write every loadgen result as JSON to this file")
    args = parser.parse_args()
    args.models_dir = os.path.abspath(args.models_dir)
    if not os.access(args.edgeinfer, os.X_OK):
        sys.exit(f"no edgeinfer binary at {args.edgeinfer}; build it: "
                 "CARGO_TARGET_DIR=/tmp/edgeinfer-release cargo build --release")

    workdir = tempfile.mkdtemp(prefix="edgeinfer-bench-")
    args.port = free_port()
    args.broker = f"mqtt://127.0.0.1:{args.port}"
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {args.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n")
    broker = subprocess.Popen([args.mosquitto, "-c", conf], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(workdir, "mosquitto.log"), "w"))
    log(f"mosquitto pid {broker.pid} on 127.0.0.1:{args.port}; logs in {workdir}")
    rows = []
    try:
        wait_port(args.port)
        for spec in args.models:
            model, _, request = spec.partition("=")
            request = os.path.abspath(request or os.path.join(args.models_dir, model, "example-request.json"))
            for server in args.servers:
                rows.append(measure(args, server, model, request, workdir))
    finally:
        broker.terminate()
        broker.wait()
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump(rows, f, indent=2)
    print(table(rows, args))
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["server"]: r for r in rows if r["model"] == model}
        if "edgeinfer" in by and "peer" in by:
            e, p = by["edgeinfer"], by["peer"]
            log(f"{model}: throughput edgeinfer/peer = {e['tput'] / p['tput']:.2f}x, "
                f"peak RSS edgeinfer/peer = {e['rss_mb'] / p['rss_mb']:.2f}, "
                f"start {e['start_ms']:.0f} ms vs {p['start_ms']:.0f} ms")
    sys.exit(1 if any(r["problems"] for r in rows) else 0)


if __name__ == "__main__":
    main()
