#!/usr/bin/env python3
"""chorus against Gloo between two network namespaces joined by a veth pair (issue 26, item 5).

    sudo python3 benches/compare_netns.py [--chorus-bench PATH] [--label TEXT]
        [--baseline PATH --baseline-label TEXT] [--ranks-per-host 1,2]
        [--shapes none,10gbit] [--rounds 3] [--ops all_reduce,broadcast,all_gather,all_to_all]
        [-b 1K -e 16M -f 4 -n 20 -w 5] [--python PYTHON_WITH_TORCH] [--markdown benches/RESULTS.md]

This is a benchmark, not a test: CI does not run it. It needs root (ip netns, tc).

What it does:
  1. Installs iperf3 (apt-get install -y iperf3) when it is missing.
  2. Creates two namespaces, A and B, joined by a veth pair (10.77.0.1/24 in A, 10.77.0.2/24 in
     B); they are deleted when the script ends, on an error, Ctrl-C or SIGTERM too (deleting a
     namespace removes its end of the veth, which removes the pair). Names carry the pid; those of
     earlier runs whose process is gone are removed first.
  3. For every shape (--shapes: `none`, or a tbf rate such as `10gbit` on both veth ends):
     measures the link with iperf3 (one stream one way, two streams one way, one stream each way
     at once) and the raw TCP round trip (a ping-pong of 8-byte messages with TCP_NODELAY, in
     Python: an upper bound of what C would see).
  4. For every ranks-per-host count L (--ranks-per-host; 2 hosts, so 2L ranks, ranks 0..L-1 in A):
     runs --rounds alternating rounds (the order flips every round) of
         ip netns exec A|B env RANK=r WORLD_SIZE=2L MASTER_ADDR=10.77.0.1 ... chorus-bench OPS ...
         ip netns exec A|B env RANK=r ... GLOO_SOCKET_IFNAME=<veth> python gloo_bench.py OPS ...
     one process per rank, and keeps each side's best time per (op, size); #wrong is the worst.
     --baseline adds a second chorus-bench (an earlier commit's build) as a third side of the
     same rounds, so before and after are compared in the same minutes of a noisy machine.
     Ranks in one namespace share memory under chorus (their default host id includes the
     network namespace); pairs across namespaces use TCP. Gloo uses TCP between all ranks.
  5. Counts the bytes that cross the link per all_reduce (tx_bytes of both veth ends, from
     /sys/class/net/<if>/statistics, both directions together) for each side: two runs with
     different iteration counts and no warm-up or check, the difference divided by the
     difference in iterations, next to the ideal for two hosts (each direction carries S bytes,
     2S in all, whatever L) and to a flat ring's 2 x 2(n-1)/n x S.
  6. Prints a markdown section (machine, versions, command, link numbers, one table per
     (L, shape, op) with every side's time and busbw, each chorus side's busbw over Gloo's and,
     from 1 MB, every side's busbw as a fraction of the one-stream iperf3 rate); --markdown
     appends it to a file.

Busbw factors are nccl-tests' (all_reduce 2(n-1)/n, all_gather and all_to_all (n-1)/n,
broadcast 1), so with one rank per host every collective's busbw is bounded by one direction of
the link; with two ranks per host a flat ring's all_reduce sends 2(n-1)/n x S across each way
too, so busbw / link is again the fraction of the link it reached.
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPS = ["all_reduce", "broadcast", "all_gather", "all_to_all"]
PREFIX = "chorus-netns-"
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2"}
# Seconds the other ranks of a run get after one failed, before they are killed.
GRACE = 5
# Link columns start at this size: below it latency, not the link, sets the time.
LINK_FROM = 1 << 20

sys.path.insert(0, HERE)
from compare_gloo import add_size_args, default_python, human, publish, wait_idle  # noqa: E402
from compare_mpi import best_of, cpu_model, log  # noqa: E402
from gloo_bench import parse_size  # noqa: E402


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stdout.strip()}")
    return p


# ---- the namespaces -------------------------------------------------------------------------

def remove_leftovers():
    """Deletes this script's namespaces whose process is gone (the names carry the pid)."""
    out = sh(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            sh(["ip", "netns", "del", name], check=False)


class Namespaces:
    """Namespaces A and B joined by a veth pair; `close` (also at exit) deletes them."""

    def __init__(self):
        pid = os.getpid()
        self.ns = {"a": f"{PREFIX}a-{pid}", "b": f"{PREFIX}b-{pid}"}
        self.dev = {"a": f"cnva{pid}", "b": f"cnvb{pid}"}
        self.open = False

    def create(self):
        remove_leftovers()
        atexit.register(self.close)
        for side in "ab":
            sh(["ip", "netns", "add", self.ns[side]])
        self.open = True
        sh(["ip", "link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"]])
        for side in "ab":
            ns, dev = self.ns[side], self.dev[side]
            sh(["ip", "link", "set", dev, "netns", ns])
            sh(["ip", "-n", ns, "addr", "add", f"{ADDR[side]}/24", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        return self

    def close(self):
        if self.open:
            for side in "ab":
                sh(["ip", "netns", "del", self.ns[side]], check=False)
            self.open = False

    def shape(self, rate):
        """A tbf of `rate` on both veth ends (`none`: no qdisc of ours)."""
        for side in "ab":
            ns, dev = self.ns[side], self.dev[side]
            sh(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if rate != "none":
                # 1 MB of burst: a few GSO packets, under a millisecond at 10 Gbit/s.
                sh(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "1mb", "latency", "10ms"])

    def exec(self, side, cmd):
        return ["ip", "netns", "exec", self.ns[side]] + cmd

    def link_bytes(self):
        """Bytes both veth ends have sent (each direction once)."""
        total = 0
        for side in "ab":
            path = f"/sys/class/net/{self.dev[side]}/statistics/tx_bytes"
            total += int(sh(self.exec(side, ["cat", path])).stdout.strip())
        return total


# ---- the link -------------------------------------------------------------------------------

def ensure_iperf3():
    if shutil.which("iperf3"):
        return
    log("# iperf3 not found: installing it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "iperf3"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "iperf3"], env=env, check=True)


def reap(server):
    """Waits for a one-off server that should be exiting; kills it if it does not."""
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def iperf(ns, extra, seconds):
    """Gbit/s B receives from A (summed over streams; with --bidir, both directions)."""
    port = str(random.randint(20000, 60000))
    server = subprocess.Popen(ns.exec("b", ["iperf3", "-s", "-1", "-p", port]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            time.sleep(0.2)
            p = sh(ns.exec("a", ["iperf3", "-c", ADDR["b"], "-p", port, "-t", str(seconds), "-J"] + extra), check=False)
            try:
                res = json.loads(p.stdout)
            except ValueError:
                res = {"error": p.stdout[-300:]}
            if p.returncode == 0 and "error" not in res:
                break
        else:
            raise RuntimeError(f"iperf3 {' '.join(extra)} failed: {res.get('error')}")
        end = res["end"]
        if "--bidir" in extra:
            return end["sum_received"]["bits_per_second"] / 1e9, end["sum_received_bidir_reverse"]["bits_per_second"] / 1e9
        return end["sum_received"]["bits_per_second"] / 1e9
    finally:
        reap(server)


def pingpong_serve(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ADDR["b"], port))
    ls.listen(1)
    print("ready", flush=True)
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d:
            return
        c.sendall(d)


def pingpong_client(port, count):
    c = socket.create_connection((ADDR["b"], port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for i in range(count + count // 10):
        t = time.perf_counter()
        c.sendall(b"x" * 8)
        c.recv(64)
        if i >= count // 10:
            times.append(time.perf_counter() - t)
    print(json.dumps({"median_us": statistics.median(times) * 1e6, "min_us": min(times) * 1e6}))


def round_trip(ns, count=20000):
    port = random.randint(20000, 60000)
    me = os.path.abspath(__file__)
    server = subprocess.Popen(ns.exec("b", [sys.executable, me, "--pingpong-serve", str(port)]), stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        out = sh(ns.exec("a", [sys.executable, me, "--pingpong-client", str(port), "--pingpong-count", str(count)])).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        reap(server)


def measure_link(ns, seconds):
    one = iperf(ns, [], seconds)
    two = iperf(ns, ["-P", "2"], seconds)
    fwd, rev = iperf(ns, ["--bidir"], seconds)
    rtt = round_trip(ns)
    return {"one_stream_gbit": one, "two_streams_gbit": two, "bidir_gbit": [fwd, rev], "rtt_us": rtt}


# ---- the runs -------------------------------------------------------------------------------

def rank_env(ns, r, n, per_host, port, gloo):
    side = "a" if r < per_host else "b"
    env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(n), LOCAL_RANK=str(r % per_host),
               LOCAL_WORLD_SIZE=str(per_host), MASTER_ADDR=ADDR["a"], MASTER_PORT=str(port))
    for k in ("CHORUS_STORE_ADDR", "CHORUS_HOST_ID", "CHORUS_SOCKET_IFADDR", "CHORUS_BENCH_CHILD"):
        env.pop(k, None)
    if gloo:
        env["GLOO_SOCKET_IFNAME"] = ns.dev[side]
    return side, env


def run_ranks(ns, argv, n, per_host, gloo, logf, timeout):
    """Runs `argv` once per rank in its namespace; rank 0's output goes to `logf`. Exit code (124: timeout)."""
    port = random.randint(20000, 60000)
    procs = []
    with open(logf, "a") as out:
        out.write(f"$ {shlex.join(argv)}  # {n} ranks, {per_host} per namespace\n")
        out.flush()
        for r in range(n):
            side, env = rank_env(ns, r, n, per_host, port, gloo)
            procs.append(subprocess.Popen(ns.exec(side, argv), env=env, stdin=subprocess.DEVNULL,
                                          stdout=out if r == 0 else subprocess.DEVNULL, stderr=out))
        # A rank that fails ends the run: the others get GRACE seconds, then are killed (a rank
        # whose peer died at rendezvous would otherwise wait for its own timeout).
        deadline, rc, failed_at = time.time() + timeout, 0, None
        try:
            while any(p.poll() is None for p in procs):
                codes = [p.poll() for p in procs]
                if failed_at is None and any(c not in (None, 0) for c in codes):
                    failed_at = time.time()
                now = time.time()
                if now >= deadline or (failed_at is not None and now - failed_at >= GRACE):
                    rc = 124 if failed_at is None else 1
                    break
                time.sleep(0.05)
            for p in procs:
                if p.poll() is not None:
                    rc |= p.returncode
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return rc


class Side:
    """One contestant: a chorus-bench binary, or Gloo (gloo_bench.py under `python`)."""

    def __init__(self, name, chorus_bench=None, python=None):
        self.name, self.chorus_bench, self.python = name, chorus_bench, python
        self.gloo = chorus_bench is None

    def argv(self, a, ops, top, json_path, iters=None, warmup=None, check=None):
        common = ["-b", a.minbytes, "-e", top, "-f", a.stepfactor, "-n", str(iters or a.iters),
                  "-w", str(a.warmup_iters if warmup is None else warmup), "--max-bytes-per-size", a.cap]
        if check is not None:
            common += ["-c", str(check)]
        common += ["--json", json_path] if json_path else []
        if self.gloo:
            return [self.python, os.path.join(HERE, "gloo_bench.py"), ",".join(ops)] + common
        return [self.chorus_bench, ",".join(ops)] + common


def bytes_per_all_reduce(ns, a, side, n, per_host, size, logf):
    """Link bytes per all_reduce of `size` bytes: the difference of two runs (2 and 10 iterations)."""
    deltas = []
    for iters in (2, 10):
        argv = side.argv(a, ["all_reduce"], size, None, iters=iters, warmup=0, check=0)
        argv[argv.index("-b") + 1] = size
        # One more try: a run can lose its rendezvous port to another program.
        for _ in range(2):
            before = ns.link_bytes()
            if run_ranks(ns, argv, n, per_host, side.gloo, logf, a.timeout) == 0:
                deltas.append(ns.link_bytes() - before)
                break
        else:
            return None
    return (deltas[1] - deltas[0]) / 8


# ---- report ---------------------------------------------------------------------------------

def torch_version(python):
    p = sh([python, "-c", "import torch; print(torch.__version__)"], check=False)
    return p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else "unknown"


def header(a, argv, link, sides):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    iperf_v = sh(["iperf3", "--version"], check=False).stdout.strip().splitlines()
    lines = [
        f"### chorus vs Gloo across two network namespaces, {now}",
        "",
        f"- machine: `nproc` = {os.cpu_count()}, {cpu_model()}, {platform.system()} {platform.release()}; "
        "two network namespaces joined by a veth pair (both namespaces share the 2 cores)",
        "- chorus (defaults, fault tolerance on): " + "; ".join(f"{s.name} = `{s.chorus_bench}`" for s in sides if not s.gloo)
        + f"; Gloo: torch {torch_version(a.python)}, `benches/gloo_bench.py`, 1 intra-op thread per rank",
        f"- link: {iperf_v[0] if iperf_v else 'iperf3'}; raw TCP round trip: Python ping-pong of 8 bytes, TCP_NODELAY",
        f"- command: `{argv}`",
        "",
        "| shape | iperf3 1 stream (Gbit/s) | 2 streams | both ways at once (each) | TCP round trip median / min (us) |",
        "|---|---:|---:|---:|---:|",
    ]
    for shape, m in link.items():
        lines.append(f"| {shape} | {m['one_stream_gbit']:.1f} | {m['two_streams_gbit']:.1f} | "
                     f"{m['bidir_gbit'][0]:.1f} / {m['bidir_gbit'][1]:.1f} | "
                     f"{m['rtt_us']['median_us']:.1f} / {m['rtt_us']['min_us']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def table(best, sides, op, n, per_host, shape, link_gbyte):
    """One markdown table: every side's time, busbw and (from LINK_FROM) busbw / link, and each
    chorus side's busbw ratio to Gloo's (the last side)."""
    gloo = sides[-1]
    sizes = sorted({s for side in sides for (o, s) in best[side.name] if o == op})
    names = [side.name for side in sides]
    cols = ([f"{x} time (us)" for x in names] + [f"{x} busbw (GB/s)" for x in names]
            + [f"{x} / gloo busbw" for x in names[:-1]] + [f"{x} / link" for x in names] + ["#wrong (" + " / ".join(names) + ")"])
    out = [f"#### {op}, 2 hosts x {per_host} rank{'s' if per_host > 1 else ''} ({n} ranks), link {shape}", "",
           "| size | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    for size in sizes:
        rows = [best[x].get((op, size)) for x in names]
        g = rows[-1]
        cell = lambda r, k, fmt: fmt.format(r[k]) if r else "–"
        ratio = lambda r: f"{r['busbw'] / g['busbw']:.2f}x" if r and g and g["busbw"] > 0 else "–"
        frac = lambda r: f"{r['busbw'] / link_gbyte:.2f}" if r and size >= LINK_FROM else "–"
        cells = ([cell(r, "time_us", "{:.1f}") for r in rows] + [cell(r, "busbw", "{:.3f}") for r in rows]
                 + [ratio(r) for r in rows[:-1]] + [frac(r) for r in rows] + ["/".join(str(r["wrong"]) if r else "–" for r in rows)])
        out.append(f"| {human(size)} | " + " | ".join(cells) + " |")
    out.append("")
    return out


# ---- main -----------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chorus-bench", default=os.path.join(ROOT, "target", "release", "chorus-bench"))
    p.add_argument("--label", default="chorus", help="names the chorus build in the tables (default chorus)")
    p.add_argument("--baseline", default=None, metavar="PATH",
                   help="a second chorus-bench (e.g. an earlier commit's) run in the same rounds, alternating")
    p.add_argument("--baseline-label", default="baseline", help="names the baseline in the tables")
    p.add_argument("--python", default=default_python(), help="python with torch, for Gloo (default: .venv)")
    p.add_argument("--ranks-per-host", default="1,2", help="comma list (default 1,2); 2 hosts each")
    p.add_argument("--shapes", default="none,10gbit", help="comma list of none or tbf rates (default none,10gbit)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ops", default=",".join(OPS))
    add_size_args(p, "16M")
    p.add_argument("--max-bytes-per-size", dest="cap", default="256M")
    p.add_argument("--bytes-size", default="16M", help="all_reduce size whose link bytes are counted (default 16M)")
    p.add_argument("--iperf-seconds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900, help="seconds per bench run before its ranks are killed")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for the (shared) machine's CPUs to go idle")
    p.add_argument("--markdown", default=None, help="append the section to this file")
    p.add_argument("--keep-json", default=None, help="directory for the JSON results and logs of every run")
    p.add_argument("--pingpong-serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pingpong-client", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pingpong-count", type=int, default=20000, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.pingpong_serve:
        return pingpong_serve(a.pingpong_serve)
    if a.pingpong_client:
        return pingpong_client(a.pingpong_client, a.pingpong_count)

    if os.geteuid() != 0:
        sys.exit("compare_netns: needs root (ip netns, tc)")
    if not os.access(a.chorus_bench, os.X_OK):
        sys.exit(f"compare_netns: {a.chorus_bench} is missing: cargo build --release -p chorus-bench")
    sides = [Side(a.label, os.path.abspath(a.chorus_bench))]
    if a.baseline:
        if not os.access(a.baseline, os.X_OK):
            sys.exit(f"compare_netns: {a.baseline} is missing")
        sides.append(Side(a.baseline_label, os.path.abspath(a.baseline)))
    sides.append(Side("gloo", python=a.python))
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        sys.exit(f"compare_netns: unknown ops {unknown}; expected some of {', '.join(OPS)}")
    per_hosts = [int(x) for x in a.ranks_per_host.split(",")]
    shapes = [x.strip() for x in a.shapes.split(",")]
    argv = shlex.join(["python3", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:])
    # SIGTERM ends the run like Ctrl-C: `finally` and atexit delete the namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    ensure_iperf3()
    tmp = a.keep_json or tempfile.mkdtemp(prefix="chorus-netns-")
    os.makedirs(tmp, exist_ok=True)
    logf = os.path.join(tmp, "runs.log")
    log(f"# JSON results and logs in {tmp}")
    ns = Namespaces()
    failed, link, sections, byte_rows = False, {}, [], []
    try:
        ns.create()
        for shape in shapes:
            ns.shape(shape)
            wait_idle(a.wait_idle)
            link[shape] = measure_link(ns, a.iperf_seconds)
            log(f"# link {shape}: {json.dumps(link[shape])}")
            link_gbyte = link[shape]["one_stream_gbit"] / 8
            for per_host in per_hosts:
                n = 2 * per_host
                runs = {side.name: [] for side in sides}
                for r in range(a.rounds):
                    # Each round starts with another side, so each sees the same kinds of noise.
                    order = sides[r % len(sides):] + sides[:r % len(sides)]
                    for side in order:
                        js = os.path.join(tmp, f"{side.name}_{shape}_L{per_host}_{r}.json")
                        if os.path.exists(js):
                            os.remove(js)
                        wait_idle(a.wait_idle)
                        t0 = time.time()
                        rc = run_ranks(ns, side.argv(a, ops, a.maxbytes, js), n, per_host, side.gloo, logf, a.timeout)
                        log(f"# {side.name}, {shape}, 2 x {per_host}, round {r + 1}/{a.rounds}: "
                            f"{'ok' if rc == 0 else f'exit {rc}'} in {time.time() - t0:.1f} s")
                        data = json.load(open(js)) if os.path.exists(js) else {}
                        failed |= rc != 0 or not data
                        runs[side.name].append(data)
                best = {name: best_of(rs) for name, rs in runs.items()}
                failed |= any(v["wrong"] for b in best.values() for v in b.values())
                transports = next((d.get("transports_rank0") for d in runs[sides[0].name] if d.get("transports_rank0")), [])
                out = [f"chorus transports (rank 0): {', '.join(transports) or 'unknown'}; best of {a.rounds} "
                       f"alternating rounds per side; link = iperf3 one stream, {link[shape]['one_stream_gbit']:.1f} Gbit/s", ""]
                for op in ops:
                    out += table(best, sides, op, n, per_host, shape, link_gbyte)
                sections.append("\n".join(out))
                size = parse_size(a.bytes_size)
                got = {side.name: bytes_per_all_reduce(ns, a, side, n, per_host, a.bytes_size, logf) for side in sides}
                byte_rows.append((shape, per_host, size, got))
                log(f"# link bytes per {a.bytes_size} all_reduce, {shape}, 2 x {per_host}: {got}")
    finally:
        ns.close()

    md = [header(a, argv, link, sides)]
    names = [side.name for side in sides]
    md += ["Bytes crossing the link per all_reduce (both directions, tx_bytes of both veth ends, frames with their "
           "headers): ideal for 2 hosts = 2 x S (S each way); flat ring = 2 x 2(n-1)/n x S.", "",
           "| shape | ranks | all_reduce size S | " + " | ".join(f"{x} bytes" for x in names)
           + " | ideal 2S | flat ring | " + " | ".join(f"{x} / ideal" for x in names) + " |",
           "|---|---|---:|" + "---:|" * (2 * len(names) + 2)]
    for shape, per_host, size, got in byte_rows:
        n = 2 * per_host
        ring = 2 * 2 * (n - 1) / n * size
        cell = lambda v: f"{v / 1e6:.2f} MB" if v is not None else "failed"
        rel = lambda v: f"{v / (2 * size):.2f}" if v is not None else "–"
        md.append(f"| {shape} | 2 x {per_host} | {human(size)} | " + " | ".join(cell(got[x]) for x in names)
                  + f" | {2 * size / 1e6:.2f} MB | {ring / 1e6:.2f} MB | " + " | ".join(rel(got[x]) for x in names) + " |")
    md.append("")
    md += sections
    publish("\n".join(md), a.markdown, failed)


if __name__ == "__main__":
    main()
