#!/usr/bin/env python3
"""Fleet scale-out: throughput and latency against the number of boards on one shared subscription.

Starts a private Mosquitto on a free loopback port (TCP_NODELAY on, no persistence). Then, for each N of
--boards, it starts N fresh `edgeinfer serve` processes, the simulated boards, each with its own --device
(`n<N>-b<i>`), one inference worker (`requests.workers = 1`, `lone_request_threads = 1`) and the fleet
topic on (the default `topics.fleet_group`), so each subscribes `$share/edgeinfer/edgeinfer/fleet/models/
+/infer`. Each board is held to a slow board's CPU share by a cgroup of its own that holds only that
process: cgroup v2 `cpu.max` "<quota> 100000", or v1 `cpu.cfs_quota_us` with `cpu.cfs_period_us` 100000,
where quota = --board-cpu x the period (0.25 of a core by default). The groups are named
edgeinfer-fleet-<this pid>-n<N>-b<i> and removed when their board has stopped, also on Ctrl-C or an error.

Per N, once every board answers on its own topic, `edgeinfer loadgen MODEL --fleet` runs a warm-up
(--warmup seconds), then the measured closed loop: --in-flight x N requests in flight (enough to keep
every board's one worker busy) for --seconds, to the fleet topic, which Mosquitto spreads over the boards.
Reported per N:

  - answered/s and loadgen's p50/p90/p99 latency, and every outcome that is not "ok" (must be none);
  - how the work spread: each board's `answered` count over the measured run, read from its retained
    stats topic `edgeinfer/<device>/stats` (published every second here) before and after the run, and
    what the boards refused or left unanswered there (must be nothing);
  - CPU, in cores, over the steady part of the measured run (from 1 s after loadgen starts to 1 s before
    its measurement ends; a quarter of --seconds if that is shorter): each board's cgroup usage
    (cpuacct.usage, or cpu.stat usage_usec on v2) against its quota, and the share of its CFS periods in
    which it was throttled; loadgen and Mosquitto (/proc/<pid>/stat), and the whole machine (/proc/stat),
    so that whatever else runs on the box shows.

The load generator and the broker run unconstrained on the same cores as the boards: with 0.25 core a
board, 8 boards alone would take all of a 2-core machine, so the curve bends where the boards' quotas plus
the client's and the broker's CPU reach the machine's cores.

Prints a markdown table on stdout (progress on stderr), closed by where the curve should bend: the CPU per
answer of a board, of loadgen and of Mosquitto, measured where the boards held their quota, give the N at
which N quotas plus the client's and the broker's share fill the cores, next to the first N whose boards
fell below 95 % of their quota. --raw FILE keeps every measurement as JSON. Exits
1 if any request got anything but an answer. Needs root to create the groups,
`mosquitto` and `mosquitto_sub` (mosquitto-clients) on the PATH, and an edgeinfer binary (--edgeinfer).

  sudo python3 bench/fleet.py [--model digits] [--models-dir DIR] [--request FILE] [--boards 1,2,3,4,5,6,7,8]
                              [--board-cpu 0.25] [--in-flight 4] [--seconds 10] [--rounds 1] [--warmup 2]
                              [--edgeinfer PATH] [--raw FILE.json]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, log, private_broker, vm_hwm_mb  # noqa: E402

PERIOD_US = 100_000
STATS_INTERVAL_S = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def default_edgeinfer():
    """The release build if there is one, else the debug build of this checkout."""
    for path in ("/tmp/edgeinfer-release/release/edgeinfer", os.path.join(ROOT, "target/release/edgeinfer"),
                 os.path.join(ROOT, "target/debug/edgeinfer")):
        if os.access(path, os.X_OK):
            return path
    return "/tmp/edgeinfer-release/release/edgeinfer"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def read(path):
    with open(path) as f:
        return f.read()


def key_values(path):
    return {k: int(v) for k, v in (line.split() for line in read(path).splitlines())}


class CpuGroups:
    """One CPU-limited cgroup per board, cgroup v2 or v1, holding only the processes this script started."""

    V2 = "/sys/fs/cgroup"
    V1_CPU = "/sys/fs/cgroup/cpu"
    V1_CPUACCT = "/sys/fs/cgroup/cpuacct"

    def __init__(self, cores):
        self.quota_us = int(round(cores * PERIOD_US))
        self.groups = {}  # name -> list of directories (v1: the cpu and the cpuacct hierarchy)
        if os.path.exists(os.path.join(self.V2, "cgroup.controllers")):
            self.version = 2
            if "cpu" not in read(os.path.join(self.V2, "cgroup.controllers")).split():
                self.fail(f"{self.V2}/cgroup.controllers has no cpu controller")
            control = os.path.join(self.V2, "cgroup.subtree_control")
            if "cpu" not in read(control).split():
                try:
                    write(control, "+cpu")
                except OSError as e:
                    self.fail(f"could not enable the cpu controller in {control} ({e})")
        elif os.path.exists(os.path.join(self.V1_CPU, "cpu.cfs_quota_us")):
            self.version = 1
        else:
            self.fail(f"neither cgroup v2 ({self.V2}/cgroup.controllers) nor v1 ({self.V1_CPU}/cpu.cfs_quota_us)")

    @staticmethod
    def fail(why):
        sys.exit(f"fleet.py holds each board to --board-cpu with a cgroup of its own and cannot here: {why}. "
                 "Run it as root on a machine whose cgroup filesystem is writable (cgroup v2 with the cpu "
                 "controller, or v1 with the cpu hierarchy mounted at /sys/fs/cgroup/cpu).")

    def create(self, name):
        if self.version == 2:
            dirs = [os.path.join(self.V2, name)]
        else:
            roots = [self.V1_CPU]
            if os.path.isdir(self.V1_CPUACCT) and os.path.realpath(self.V1_CPUACCT) != os.path.realpath(self.V1_CPU):
                roots.append(self.V1_CPUACCT)
            dirs = [os.path.join(root, name) for root in roots]
        self.groups[name] = []
        try:
            for d in dirs:
                os.mkdir(d)
                self.groups[name].append(d)
            if self.version == 2:
                write(os.path.join(dirs[0], "cpu.max"), f"{self.quota_us} {PERIOD_US}")
            else:
                write(os.path.join(dirs[0], "cpu.cfs_period_us"), str(PERIOD_US))
                write(os.path.join(dirs[0], "cpu.cfs_quota_us"), str(self.quota_us))
        except OSError as e:
            self.fail(f"could not set up {dirs[0]} ({e})")
        if self.version == 1 and not any(os.path.exists(os.path.join(d, "cpuacct.usage")) for d in dirs):
            self.fail("no cpuacct controller next to the v1 cpu hierarchy (its usage is how a board's CPU is read)")

    def add(self, name, pid):
        """Moves process `pid` (all its threads) into the group."""
        for d in self.groups[name]:
            write(os.path.join(d, "cgroup.procs"), str(pid))

    def sample(self, name):
        """CPU used (seconds), CFS periods and throttled periods of the group so far."""
        dirs = self.groups[name]
        if self.version == 2:
            stat = key_values(os.path.join(dirs[0], "cpu.stat"))
            return {"cpu_s": stat["usage_usec"] / 1e6, "periods": stat["nr_periods"], "throttled": stat["nr_throttled"]}
        stat = key_values(os.path.join(dirs[0], "cpu.stat"))
        usage = next(os.path.join(d, "cpuacct.usage") for d in dirs if os.path.exists(os.path.join(d, "cpuacct.usage")))
        return {"cpu_s": int(read(usage)) / 1e9, "periods": stat["nr_periods"], "throttled": stat["nr_throttled"]}

    def remove(self, name):
        """Removes the group; its process must have exited."""
        for d in reversed(self.groups.pop(name, [])):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                log(f"  could not remove {d}: {read(os.path.join(d, 'cgroup.procs')).split()} still in it")


def proc_cpu_s(pid):
    """utime + stime of a process (all its threads), in seconds."""
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s():
    """CPU seconds the whole machine has spent not idle (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in read("/proc/stat").split()[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK  # guest time is already in user; steal is not ours


class Board:
    """One simulated board: an `edgeinfer serve` process in a CPU-limited cgroup of its own."""

    def __init__(self, args, groups, device, workdir):
        self.device, self.groups = device, groups
        self.group = f"edgeinfer-fleet-{os.getpid()}-{device}"
        config = os.path.join(workdir, f"{device}.toml")
        write(config, f'[broker]\nurl = "{args.broker}"\nsession_expiry_secs = 0\n\n'
                      f'[topics]\ndevice = "{device}"\n\n[models]\nrepository = "{args.repo}"\n\n'
                      f"[requests]\nworkers = 1\nlone_request_threads = 1\nstats_interval_secs = {STATS_INTERVAL_S}\n")
        groups.create(self.group)
        self.server = Server([args.edgeinfer, "serve", "--config", config], r"connected to broker",
                             os.path.join(workdir, f"{device}.log"))
        try:
            groups.add(self.group, self.server.proc.pid)
        except OSError:
            self.stop()
            raise

    def stop(self):
        """Stops the process and removes its group; its peak RSS in MB (None if it had exited)."""
        proc, hwm = self.server.proc, None
        if proc.poll() is None:
            hwm = vm_hwm_mb(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"  {self.device} (pid {proc.pid}) ignored SIGTERM for 15 s; killing it")
                proc.kill()
                proc.wait()
        self.groups.remove(self.group)
        return hwm


def loadgen(args, *extra, during=None):
    """Runs `edgeinfer loadgen` to completion and returns its JSON result; `during(pid)`, if given, is called
    while it runs and its return value is returned too."""
    argv = [args.edgeinfer, "loadgen", args.model, "--broker", args.broker, "-i", args.request, "--json",
            *map(str, extra)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        seen = during(proc.pid) if during else None
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    return (json.loads(out), seen) if during else json.loads(out)


def stats(args, devices):
    """Each board's retained stats for the model: {device: {"answered": n, "refused": {...}}}."""
    argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(args.port), "-v", "-C", str(len(devices)), "-W", "10"]
    for device in devices:
        argv += ["-t", f"edgeinfer/{device}/stats"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    seen = {}
    for line in out.splitlines():
        topic, _, payload = line.partition(" ")
        snapshot = json.loads(payload)
        model = snapshot["models"][args.model]
        seen[topic.split("/")[1]] = {
            "answered": model["answered"],
            "refused": {**model["errors"], **model.get("unanswered", {}), **snapshot["other"]["errors"]},
        }
    missing = [d for d in devices if d not in seen]
    if missing:
        raise RuntimeError(f"no stats from {missing} within 10 s")
    return seen


def not_ok(result):
    return {k: v for k, v in result["outcomes"].items() if k != "ok"}


def step(args, groups, n, round_, workdir):
    """Starts n boards, drives them, stops them; the figures of this N."""
    devices = [f"r{round_}-n{n}-b{i}" for i in range(1, n + 1)]
    boards = []
    try:
        for device in devices:
            boards.append(Board(args, groups, device, workdir))
        for board in boards:
            board.server.wait_ready(120)
        for board in boards:  # each board answers on its own topic: its model is loaded, its subscriptions made
            loadgen(args, "--device", board.device, "--wait-ready", 120, "--concurrency", 1, "--seconds", 0.1)
        in_flight = args.in_flight * n
        warm = loadgen(args, "--fleet", "--concurrency", in_flight, "--seconds", args.warmup)
        time.sleep(STATS_INTERVAL_S + 0.5)
        before = stats(args, devices)

        def window(pid):
            """CPU counters at two instants inside the measured run, args.margin after its start and before its
            end, so that neither loadgen's start nor its close (which waits up to 1 s) dilutes the rates."""
            started = time.monotonic()
            samples = []
            for at in (args.margin, args.seconds - args.margin):
                time.sleep(max(0.0, started + at - time.monotonic()))
                samples.append({"t": time.monotonic(), "boards": {b.device: groups.sample(b.group) for b in boards},
                                "loadgen": proc_cpu_s(pid), "broker": proc_cpu_s(args.broker_pid),
                                "machine": machine_busy_s()})
            return samples

        result, (first, last) = loadgen(args, "--fleet", "--concurrency", in_flight, "--seconds", args.seconds,
                                        during=window)
        time.sleep(STATS_INTERVAL_S + 0.5)
        after = stats(args, devices)
    finally:
        rss = [board.stop() for board in reversed(boards)][::-1]
    span = last["t"] - first["t"]
    per_board = []
    for board, hwm in zip(boards, rss):
        a, b = last["boards"][board.device], first["boards"][board.device]
        periods = a["periods"] - b["periods"]
        refused = {k: v - before[board.device]["refused"].get(k, 0) for k, v in after[board.device]["refused"].items()}
        per_board.append({
            "device": board.device,
            "answered": after[board.device]["answered"] - before[board.device]["answered"],
            "refused": {k: v for k, v in refused.items() if v},
            "cpu_cores": (a["cpu_s"] - b["cpu_s"]) / span,
            "throttled_share": (a["throttled"] - b["throttled"]) / periods if periods else 0.0,
            "peak_rss_mb": hwm,
        })
    daemons = sum(b["cpu_cores"] for b in per_board)
    loadgen_cores, broker, machine = ((last[k] - first[k]) / span for k in ("loadgen", "broker", "machine"))
    return {
        "boards": n, "round": round_, "in_flight": in_flight, "cpu_window_s": span, "warmup": warm, "loadgen": result,
        "errors": {**not_ok(warm), **not_ok(result)},
        "board_refused": {b["device"]: b["refused"] for b in per_board if b["refused"]},
        "per_board": per_board, "daemons_cores": daemons, "loadgen_cores": loadgen_cores, "broker_cores": broker,
        "machine_cores": machine, "other_cores": machine - daemons - loadgen_cores - broker,
    }


def least_disturbed(rows, boards):
    """Per N, the round in which other processes used the least CPU."""
    return [min((r for r in rows if r["boards"] == n), key=lambda r: r["other_cores"]) for n in sorted(set(boards))]


def table(all_rows, args):
    rows = least_disturbed(all_rows, args.boards)
    base = rows[0]["loadgen"]["throughput_per_s"] / rows[0]["boards"]
    rounds = f" | answered/s, rounds {', '.join(map(str, range(1, args.rounds + 1)))}" if args.rounds > 1 else ""
    out = [
        f"| boards | in flight | answered/s | per board | vs N x {rows[0]['boards']}-board rate | p50 ms | p90 ms "
        f"| p99 ms | errors | answered per board, min-max | board CPU mean / max (quota {args.board_cpu}) "
        f"| throttled periods | boards' CPU | loadgen CPU | mosquitto CPU | machine busy (of {os.cpu_count()}) "
        f"| other processes{rounds} |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|--:|--:|--:|--:|--:|--:|" + ("---|" if rounds else ""),
    ]
    for r in rows:
        lg, n, pb = r["loadgen"], r["boards"], r["per_board"]
        answered = [b["answered"] for b in pb]
        cores = [b["cpu_cores"] for b in pb]
        errors = {**r["errors"], **{f"{d}:{k}": v for d, e in r["board_refused"].items() for k, v in e.items()}}
        out.append(
            f"| {n} | {r['in_flight']} | {lg['throughput_per_s']:,.1f} | {lg['throughput_per_s'] / n:,.1f} "
            f"| {lg['throughput_per_s'] / (n * base):.0%} | {lg['p50_ms']:.1f} | {lg['p90_ms']:.1f} "
            f"| {lg['p99_ms']:.1f} "
            f"| {', '.join(f'{k}={v}' for k, v in sorted(errors.items())) or '0'} "
            f"| {min(answered):,}-{max(answered):,} | {sum(cores) / n:.3f} / {max(cores):.3f} "
            f"| {sum(b['throttled_share'] for b in pb) / n:.0%} | {r['daemons_cores']:.2f} | {r['loadgen_cores']:.2f} "
            f"| {r['broker_cores']:.2f} | {r['machine_cores']:.2f} | {r['other_cores']:.2f} |"
            + (" " + ", ".join(f"{x['loadgen']['throughput_per_s']:,.0f}"
                               for x in sorted((x for x in all_rows if x["boards"] == n), key=lambda x: x["round"]))
               + " |" if rounds else "")
        )
    if args.rounds > 1:
        out.append(f"\nPer N, the round of {args.rounds} in which other processes used the least CPU (rounds alternate "
                   "ascending and descending N); every round is in --raw.")
    out.append("\n" + bend(rows, args))
    return "\n".join(out)


def bend(rows, args):
    """Where the curve should bend and where it did: the boards stop growing the total once the quotas of N boards
    plus the CPU that loadgen and Mosquitto spend on their answers fill the machine's cores."""
    held = [r for r in rows if r["daemons_cores"] / r["boards"] >= 0.95 * args.board_cpu]
    if not held:
        return f"No N held every board at 95 % of its {args.board_cpu} core: no bend to read."
    answers = sum(r["loadgen"]["throughput_per_s"] for r in held)
    board, client, broker = (sum(r[k] for r in held) / answers * 1000
                             for k in ("daemons_cores", "loadgen_cores", "broker_cores"))
    expected = os.cpu_count() / (args.board_cpu * (1 + (client + broker) / board))
    below = [r["boards"] for r in rows if r not in held]
    return (f"CPU per answer where the boards held their quota (N = {', '.join(str(r['boards']) for r in held)}): "
            f"board {board:.3f} ms, loadgen {client:.3f} ms, mosquitto {broker:.3f} ms; on an otherwise idle machine "
            f"{os.cpu_count()} cores / ({args.board_cpu} core x (1 + {client + broker:.3f} / {board:.3f})) = "
            f"{expected:.1f} boards fill it. Measured: "
            + (f"the first N whose boards fall below 95 % of their quota is {min(below)}." if below else
               f"every N up to {rows[-1]['boards']} held its quota."))


def boards_list(text):
    values = [int(v) for v in text.split(",")]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of board counts >= 1")
    return values


def main():
    parser = argparse.ArgumentParser(
        description="Throughput and latency against N CPU-limited edgeinfer boards on one fleet topic",
        epilog="Needs root for the cgroups; see the docstring at the top of the file.")
    parser.add_argument("--model", default="digits", help="a model directory under --models-dir (default: digits)")
    parser.add_argument("--models-dir", default=os.path.join(ROOT, "models"),
                        help="the model repository (default: models/ of this checkout; the pack's model.onnx files "
                             "are where `python3 models/fetch.py` was run)")
    parser.add_argument("--request", help="the request to send: OIP JSON, or a .jpg/.png for a model with an image "
                                          "[preprocess] (default: MODELS_DIR/MODEL/example-request.json)")
    parser.add_argument("--boards", type=boards_list, default=[1, 2, 3, 4, 5, 6, 7, 8],
                        help="the board counts to measure, in order (default: 1,2,3,4,5,6,7,8)")
    parser.add_argument("--board-cpu", type=float, default=0.25,
                        help="cores each board may use, its cgroup's CFS quota over a 100 ms period (default: 0.25)")
    parser.add_argument("--in-flight", type=int, default=4,
                        help="requests in flight per board: loadgen's --concurrency is this x N (default: 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per N (default: 10)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweeps over --boards, alternately ascending and descending; the table shows, per N, "
                             "the round least disturbed by other processes (default: 1)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of load before each measurement (default: 2)")
    parser.add_argument("--edgeinfer", default=default_edgeinfer(),
                        help="the binary (default: the release build in /tmp/edgeinfer-release, target/release, "
                             "then target/debug)")
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                        help="the broker binary (default: mosquitto on the PATH)")
    parser.add_argument("--raw", help="also write every measurement as JSON to this file")
    args = parser.parse_args()
    args.margin = min(1.0, args.seconds / 4)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not 0 < args.board_cpu <= os.cpu_count():
        parser.error(f"--board-cpu must be in (0, {os.cpu_count()}]")
    if not os.access(args.edgeinfer, os.X_OK):
        sys.exit(f"no edgeinfer binary at {args.edgeinfer} (--edgeinfer PATH)")
    if not shutil.which("mosquitto_sub"):
        sys.exit("mosquitto_sub is not on the PATH (Debian: apt-get install mosquitto-clients)")
    model_dir = os.path.join(os.path.abspath(args.models_dir), args.model)
    if not os.path.isfile(os.path.join(model_dir, "model.onnx")):
        sys.exit(f"no {model_dir}/model.onnx (the pack: python3 models/fetch.py; or --models-dir)")
    args.request = os.path.abspath(args.request or os.path.join(model_dir, "example-request.json"))
    groups = CpuGroups(args.board_cpu)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the boards, remove their groups

    workdir = tempfile.mkdtemp(prefix="edgeinfer-fleet-")
    args.repo = os.path.join(workdir, "repo")
    # a copy, not a symlink: edgeinfer's repository scan skips symlinked model directories
    shutil.copytree(model_dir, os.path.join(args.repo, args.model))
    broker, args.broker = private_broker(args.mosquitto, workdir)
    args.port, args.broker_pid = int(args.broker.rsplit(":", 1)[1]), broker.pid
    log(f"mosquitto pid {broker.pid} at {args.broker}; cgroup v{groups.version}, {args.board_cpu} core a board; "
        f"{args.edgeinfer}; request {args.request}; logs in {workdir}")
    rows = []
    try:
        for round_ in range(1, args.rounds + 1):
            for n in args.boards if round_ % 2 else args.boards[::-1]:
                row = step(args, groups, n, round_, workdir)
                rows.append(row)
                lg = row["loadgen"]
                log(f"  round {round_}, {n} board(s), {row['in_flight']} in flight: {lg['throughput_per_s']:.1f}/s, "
                    f"p50 {lg['p50_ms']:.1f} p99 {lg['p99_ms']:.1f} ms, "
                    f"answered {[b['answered'] for b in row['per_board']]}, "
                    f"boards {row['daemons_cores']:.2f} + loadgen {row['loadgen_cores']:.2f} + mosquitto "
                    f"{row['broker_cores']:.2f} of {row['machine_cores']:.2f} busy cores (other processes "
                    f"{row['other_cores']:.2f}), errors {row['errors'] or 0}")
    finally:
        for name in list(groups.groups):  # a board that failed to start
            groups.remove(name)
        broker.terminate()
        broker.wait()
        if args.raw and rows:
            with open(args.raw, "w") as f:
                json.dump({"argv": sys.argv, "edgeinfer": args.edgeinfer, "request": args.request,
                           "board_cpu": args.board_cpu, "cgroup_version": groups.version, "cpus": os.cpu_count(),
                           "rows": rows}, f, indent=2)
    print(table(rows, args))
    sys.exit(1 if any(r["errors"] or r["board_refused"] for r in rows) else 0)


if __name__ == "__main__":
    main()
