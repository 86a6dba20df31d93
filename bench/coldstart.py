#!/usr/bin/env python3
"""Cold start: how long `edgeinfer serve` takes from spawn to ready, without and with the model cache
(models.cache_dir), against onnxruntime's InferenceSession creation for the same file.

For each model directory given (each served alone, from a copy in a temporary repository):
  * edgeinfer, no cache: `models.cache_dir = ""`;
  * edgeinfer, cache miss: an empty cache directory (this start also writes the cache file);
  * edgeinfer, cache hit: the cache directory the previous start filled;
  * onnxruntime: `InferenceSession(path, options)` in this process, after the imports, with the
    peer's settings (bench/peer.py: intra_op_num_threads = 1, default graph optimisations).
edgeinfer's figure is spawn to its "connected to broker" log line (the models are loaded, optimised
and run once on zeros before the daemon connects) against a private Mosquitto on loopback.
Every figure is the median of --runs fresh starts; the files are in the page cache for all of them.

  python3 bench/coldstart.py --edgeinfer target/release/edgeinfer models/squeezenet target/pack-random/resnet50
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from compare import free_port, wait_port  # same directory: the private-broker helpers


def serve_once(edgeinfer, repo, config, broker_port):
    """Spawns the daemon, returns ms from spawn to 'connected to broker', stops it."""
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    env.pop("CACHE_DIRECTORY", None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [edgeinfer, "serve", "--config", config, "--models", repo, "--broker", f"mqtt://127.0.0.1:{broker_port}",
         "--device", "coldstart"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    ready, lines = None, []
    for line in proc.stderr:
        lines.append(line)
        if "connected to broker" in line:
            ready = (time.perf_counter() - start) * 1e3
            break
    proc.terminate()
    _, rest = proc.communicate(timeout=30)
    if ready is None:
        sys.exit("edgeinfer never got ready:\n" + "".join(lines) + rest)
    warnings = [l.strip() for l in lines + rest.splitlines() if " WARN " in l or "ERROR" in l]
    return ready, warnings


def onnxruntime_session_ms(onnx, runs):
    import onnxruntime as ort
    times = []
    for _ in range(runs):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        start = time.perf_counter()
        ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories (model.onnx + model.toml)")
    parser.add_argument("--edgeinfer", default="target/release/edgeinfer")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = parser.parse_args()
    edgeinfer = os.path.abspath(args.edgeinfer)

    work = tempfile.mkdtemp(prefix="coldstart-")
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
    broker = subprocess.Popen([args.mosquitto, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        print("| model | ONNX file (MB) | edgeinfer, no cache (ms) | edgeinfer, cache miss: load + write (ms) "
              "| edgeinfer, cache hit (ms) | cache file (MB) | onnxruntime session (ms) | hit / onnxruntime |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|")
        for index, model_dir in enumerate(args.models):
            name = os.path.basename(os.path.normpath(model_dir))
            repo = os.path.join(work, f"repo-{index}")
            shutil.copytree(model_dir, os.path.join(repo, name))
            onnx = os.path.join(repo, name, "model.onnx")
            cache = os.path.join(work, f"cache-{index}")
            os.mkdir(cache)
            configs = {}
            for mode, cache_dir in [("off", ""), ("on", cache)]:
                configs[mode] = os.path.join(work, f"{index}-{mode}.toml")
                with open(configs[mode], "w") as f:
                    f.write(f'[models]\ncache_dir = "{cache_dir}"\n')
            off, miss, hit, all_warnings = [], [], [], []
            for _ in range(args.runs):
                ms, w = serve_once(edgeinfer, repo, configs["off"], port)
                off.append(ms)
                all_warnings += w
                for f in os.listdir(cache):
                    os.remove(os.path.join(cache, f))
                ms, w = serve_once(edgeinfer, repo, configs["on"], port)
                miss.append(ms)
                all_warnings += w
                ms, w = serve_once(edgeinfer, repo, configs["on"], port)
                hit.append(ms)
                all_warnings += w
            cache_mb = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 1e6
            session = onnxruntime_session_ms(onnx, args.runs)
            med = statistics.median
            print(f"| {name} ({model_dir}) | {os.path.getsize(onnx) / 1e6:.2f} | {med(off):.0f} | {med(miss):.0f} "
                  f"| {med(hit):.0f} | {cache_mb:.1f} | {med(session):.0f} | {med(hit) / med(session):.2f} |",
                  flush=True)
            print(f"  raw ms: off {[round(x) for x in off]}, miss {[round(x) for x in miss]}, "
                  f"hit {[round(x) for x in hit]}, onnxruntime {[round(x) for x in session]}", file=sys.stderr)
            for w in sorted(set(all_warnings)):
                print(f"  edgeinfer said: {w}", file=sys.stderr)
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
