#!/usr/bin/env python3
"""Side-by-side: chorus-bench against Open MPI (benches/mpi_bench.c), same sizes, semantics and checks.

    python3 benches/compare_mpi.py [--nprocs 2,4] [--loads idle,hog] [--rounds 3]
                                   [--ops all_reduce,broadcast,all_gather,all_to_all]
                                   [-b 16 -e 64M --reduced-maxbytes 16M -f 4 -n 20 -w 5]
                                   [--markdown benches/RESULTS.md] [--keep-json DIR]

This is a benchmark, not a test: CI does not run it.

What it does:
  1. Installs Open MPI from Debian's packages when `mpicc` is missing
     (apt-get install -y --no-install-recommends openmpi-bin libopenmpi-dev; sudo only if not root).
  2. Compiles benches/mpi_bench.c with `mpicc -O2` (into --build-dir, not into the tree).
  3. For every rank count (--nprocs) and load (--loads: `idle`, or `hog` = exactly one extra
     busy-looping process, `sh -c 'while :; do :; done'`, started before and killed after the
     runs of that configuration), runs --rounds alternating rounds of
         target/release/chorus-bench OPS --nprocs NP -b .. -e .. -f 4 -n N -w W --json FILE
         mpirun --allow-run-as-root --oversubscribe -np NP mpi_bench OPS -b .. -e .. ... --json FILE
     (the order flips every round, so both sides see the same kind of noise) and keeps each
     side's best time per (op, size); #wrong is the worst over the rounds.
  4. Prints one markdown table per (configuration, op): size | chorus time | Open MPI time |
     ratio (mpi/chorus; above 1 means chorus is faster) | both busbw | #wrong chorus/mpi,
     under a header with the machine, the Open MPI version, the date and the exact command;
     --markdown FILE appends the same text to FILE.

Sizes: -e (64M) is the top size for 2 ranks idle; more ranks and the hog runs stop at
--reduced-maxbytes (16M) to keep the total time reasonable. -b defaults to 16 because with -f 4
a sweep from 8 never lands on 64M or 16M (8 * 4^k are odd powers of two); 16 * 4^k hits both and
contains the 1K..64M grid of the Gloo tables.

Open MPI setup: OMPI_MCA_pml=ob1 (Debian's build also has UCX, which would take the shared-memory
path out of the BTLs' hands), OMPI_MCA_btl=self,vader (shared memory), and
btl_vader_single_copy_mechanism=cma (Linux Cross-Memory Attach, process_vm_readv: one copy for
messages above the eager limit) when a probe run shows it works here, otherwise Open MPI's choice.
Collectives: Open MPI's defaults (coll tuned with its built-in decision rules). Chorus runs with its
defaults (fault tolerance on). Open MPI binds each rank to a core when the ranks fit the cores
and binds nothing when oversubscribed; it busy-polls unless oversubscribed (then it yields).
Both are Open MPI's defaults and are left as they are (--mpirun-args adds options, e.g.
"--bind-to none").
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPS = ["all_reduce", "broadcast", "all_gather", "all_to_all"]

# Shared with the Gloo comparison (standard library only, no torch at import).
sys.path.insert(0, HERE)
from compare_gloo import publish, wait_idle  # noqa: E402
from gloo_bench import parse_size  # noqa: E402


def human(n):
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}"


def log(msg):
    print(msg, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


# ---- setup ----------------------------------------------------------------------------------

def ensure_openmpi():
    if shutil.which("mpicc") and shutil.which("mpirun"):
        return
    log("# mpicc not found: installing Open MPI from Debian's packages")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = sudo + ["apt-get", "install", "-y", "--no-install-recommends", "openmpi-bin", "libopenmpi-dev"]
    if subprocess.run(install, env=env).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(sudo + ["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    if not shutil.which("mpicc"):
        sys.exit("compare_mpi: mpicc still missing after installing openmpi-bin libopenmpi-dev")


def build_mpi_bench(build_dir):
    os.makedirs(build_dir, exist_ok=True)
    src = os.path.join(HERE, "mpi_bench.c")
    exe = os.path.join(build_dir, "mpi_bench")
    cmd = ["mpicc", "-O2", "-o", exe, src]
    log(f"$ {shlex.join(cmd)}")
    p = sh(cmd)
    if p.returncode != 0:
        sys.stderr.write(p.stdout)
        sys.exit("compare_mpi: compiling mpi_bench.c failed")
    return exe


def check_chorus_bench(path):
    if not os.access(path, os.X_OK):
        sys.exit(f"compare_mpi: {path} is missing: build it first (cargo build --release --workspace --bins)")
    built = os.path.getmtime(path)
    newer = []
    for top in ("src", "backend", "bootstrap", "kernels", "benches/src"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            newer += [os.path.join(d, f) for f in files
                      if f.endswith(".rs") and os.path.getmtime(os.path.join(d, f)) > built]
    if newer:
        log(f"# warning: {path} is older than {len(newer)} source file(s) (e.g. "
            f"{os.path.relpath(newer[0], ROOT)}): rebuild it for current numbers")


def mpi_env(cma):
    env = dict(os.environ)
    env["OMPI_MCA_pml"] = "ob1"
    env["OMPI_MCA_btl"] = "self,vader"
    if cma:
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "cma"
    else:
        env.pop("OMPI_MCA_btl_vader_single_copy_mechanism", None)
    return env


def mpirun_base(np, extra):
    # --allow-run-as-root: Open MPI refuses root otherwise; harmless for other users.
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np)] + extra


def probe_cma(exe, extra):
    """Does vader's CMA single copy work here (ptrace permission between the ranks)?"""
    cmd = mpirun_base(2, extra) + [exe, "broadcast,all_to_all", "-b", "4M", "-e", "4M", "-n", "1", "-w", "0"]
    p = sh(cmd, env=mpi_env(True), timeout=120)
    bad = any(w in p.stdout for w in ("process_vm", "CMA", "single-copy", "single copy"))
    if p.returncode == 0 and not bad and "Out of bounds values : 0 OK" in p.stdout:
        return True
    log("# CMA single copy does not work here; Open MPI picks its own mechanism. Probe output:")
    log("\n".join("#   " + l for l in p.stdout.splitlines()[-15:]))
    return False


# ---- runs -----------------------------------------------------------------------------------

def run_bench(cmd, label, json_path, logf, env=None, timeout=1800):
    if os.path.exists(json_path):
        os.remove(json_path)
    log(f"$ {shlex.join(cmd)}")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           timeout=timeout)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        out, rc = out.decode(errors="replace") if isinstance(out, bytes) else out, 124
    dt = time.time() - t0
    with open(logf, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{out}\n")
    if rc != 0:
        sys.stdout.write(out[-3000:])
    log(f"# {label} {'finished' if rc == 0 else f'exited with status {rc}'} in {dt:.1f} s")
    data = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            data = json.load(f)
    return rc, data


def best_of(runs):
    """Per (op, size) the lowest time (noise on a shared machine only adds time); #wrong is the
    worst over the runs."""
    best = {}
    for r in runs:
        for row in r.get("results", []):
            k = (row["op"], row["size"])
            if k not in best:
                best[k] = dict(row)
                continue
            w = max(best[k]["wrong"], row["wrong"])
            if row["time_us"] < best[k]["time_us"]:
                best[k] = dict(row)
            best[k]["wrong"] = w
    return best


class Hog:
    """Exactly one busy-looping process for the duration of a `with` block."""

    def __init__(self, on):
        self.on, self.p = on, None

    def __enter__(self):
        if self.on:
            self.p = subprocess.Popen(["sh", "-c", "while :; do :; done"])
            log(f"# hog started: pid {self.p.pid} (sh -c 'while :; do :; done')")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        if self.p:
            self.p.kill()
            self.p.wait()
            log(f"# hog {self.p.pid} stopped")
        return False


# ---- report ---------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ompi_version():
    p = sh(["mpirun", "--version"])
    first = p.stdout.strip().splitlines()[0] if p.stdout.strip() else "unknown"
    q = sh(["dpkg-query", "-W", "-f=${Version}", "openmpi-bin"])
    return first + (f" (Debian openmpi-bin {q.stdout.strip()})" if q.returncode == 0 and q.stdout.strip() else "")


def header(a, cma, argv):
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {round(int(f.readline().split()[1]) / (1 << 20))} GiB"
    except (OSError, ValueError, IndexError):
        pass
    chorus_env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("CHORUS_"))
    lines = [
        f"## chorus vs Open MPI, {now}",
        "",
        f"- machine: `nproc` = {os.cpu_count()}, {cpu_model()}{mem}, {platform.system()} {platform.release()}",
        f"- Open MPI: {ompi_version()}; OMPI_MCA_pml=ob1, OMPI_MCA_btl=self,vader, single copy "
        + ("cma (btl_vader_single_copy_mechanism)" if cma
           else "Open MPI's choice (" + ("--no-cma" if a.no_cma else "CMA probe failed") + ")")
        + "; collectives: Open MPI's defaults (coll tuned); mpirun "
        + shlex.join(["--allow-run-as-root", "--oversubscribe"] + shlex.split(a.mpirun_args))
        + " (default binding: one core per rank when the ranks fit the cores, none when oversubscribed)",
        f"- chorus: {os.path.relpath(a.chorus_bench, ROOT)} with its defaults (fault tolerance on)"
        + (f"; environment: {chorus_env}" if chorus_env else ""),
        "- both: float32, sizes are total buffer bytes; warm-up, barrier, mean time per iteration of the "
        "timed loop, maximum over ranks; every element of one more iteration on fresh buffers checked; "
        "buffers 64 bytes past a page boundary",
        f"- command: `{argv}`",
        "",
    ]
    return "\n".join(lines)


def tables(chorus, mpi, ops, np, load, title, transports):
    out = [f"### {title}", ""]
    if transports:
        out += [f"chorus transports (rank 0): {', '.join(transports)}", ""]
    for op in ops:
        sizes = sorted({s for (o, s) in chorus if o == op} | {s for (o, s) in mpi if o == op})
        if not sizes:
            continue
        out += [f"#### {op} ({np} ranks, {load})", "",
                "| size | chorus time (us) | Open MPI time (us) | ratio (mpi/chorus) | chorus busbw (GB/s) | mpi busbw (GB/s) | #wrong (chorus/mpi) |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for s in sizes:
            c, m = chorus.get((op, s)), mpi.get((op, s))
            ct = f"{c['time_us']:.1f}" if c else "–"
            mt = f"{m['time_us']:.1f}" if m else "–"
            cb = f"{c['busbw']:.3f}" if c else "–"
            mb = f"{m['busbw']:.3f}" if m else "–"
            ratio = f"{m['time_us'] / c['time_us']:.2f}x" if c and m and c["time_us"] > 0 else "–"
            wr = f"{c['wrong'] if c else '–'}/{m['wrong'] if m else '–'}"
            out.append(f"| {human(s)} | {ct} | {mt} | {ratio} | {cb} | {mb} | {wr} |")
        out.append("")
    return "\n".join(out)


# ---- main -----------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nprocs", default="2,4", help="comma list of rank counts (default 2,4)")
    p.add_argument("--loads", default="idle,hog", help="comma list of idle and/or hog (default idle,hog)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "3")),
                   help="alternating rounds per side and configuration (default $ROUNDS or 3)")
    p.add_argument("--ops", default=",".join(OPS), help="comma list of " + ", ".join(OPS))
    p.add_argument("-b", "--minbytes", default="16")
    p.add_argument("-e", "--maxbytes", default="64M", help="top size for 2 ranks idle (default 64M)")
    p.add_argument("--reduced-maxbytes", default="16M",
                   help="top size for more than 2 ranks and for hog runs (default 16M; capped by -e)")
    p.add_argument("-f", "--stepfactor", default="4")
    p.add_argument("-n", "--iters", default="20")
    p.add_argument("-w", "--warmup_iters", default="5")
    p.add_argument("--max-bytes-per-size", dest="cap", default="256M")
    p.add_argument("--chorus-bench", default=os.path.join(ROOT, "target", "release", "chorus-bench"))
    p.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "chorus-mpi-bench"),
                   help="where mpi_bench is compiled (default $TMPDIR/chorus-mpi-bench)")
    p.add_argument("--mpirun-args", default="", help="extra mpirun options, e.g. '--bind-to none'")
    p.add_argument("--no-cma", action="store_true", help="do not ask for CMA single copy")
    p.add_argument("--markdown", default=None, help="append the header and tables to this file")
    p.add_argument("--keep-json", default=None, help="directory for the JSON results and logs of every run")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for the (shared) machine's CPUs to go idle")
    a = p.parse_args()

    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    for o in ops:
        if o not in OPS:
            sys.exit(f"compare_mpi: unknown op {o!r}; expected some of {', '.join(OPS)}")
    nps = [int(x) for x in a.nprocs.split(",")]
    loads = [x.strip() for x in a.loads.split(",")]
    for l in loads:
        if l not in ("idle", "hog"):
            sys.exit(f"compare_mpi: unknown load {l!r}; expected idle or hog")
    if a.rounds < 1:
        sys.exit("compare_mpi: --rounds must be at least 1")

    # SIGTERM ends the run like Ctrl-C, so the hog is always killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    argv = shlex.join(["python3", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:])
    if "ROUNDS" in os.environ and not any(x == "--rounds" or x.startswith("--rounds=") for x in sys.argv[1:]):
        argv = f"ROUNDS={shlex.quote(os.environ['ROUNDS'])} {argv}"

    ensure_openmpi()
    check_chorus_bench(a.chorus_bench)
    exe = build_mpi_bench(a.build_dir)
    extra = shlex.split(a.mpirun_args)
    cma = False if a.no_cma else probe_cma(exe, extra)
    env = mpi_env(cma)
    tmp = a.keep_json or tempfile.mkdtemp(prefix="chorus-mpi-cmp-")
    os.makedirs(tmp, exist_ok=True)
    logf = os.path.join(tmp, "runs.log")
    log(f"# JSON results and full logs in {tmp}")

    md = [header(a, cma, argv)]
    failed = 0
    t_start = time.time()
    for np in nps:
        for load in loads:
            top = a.maxbytes
            if np > 2 or load == "hog":
                top = a.reduced_maxbytes if parse_size(a.reduced_maxbytes) < parse_size(a.maxbytes) else a.maxbytes
            common = ["-b", a.minbytes, "-e", top, "-f", a.stepfactor, "-n", a.iters, "-w", a.warmup_iters,
                      "--max-bytes-per-size", a.cap]
            runs_c, runs_m = [], []
            log(f"#\n# === {np} ranks, {load}, sizes {a.minbytes}..{top} ===")
            with Hog(load == "hog"):
                for r in range(a.rounds):
                    cj = os.path.join(tmp, f"chorus_n{np}_{load}_{r}.json")
                    mj = os.path.join(tmp, f"mpi_n{np}_{load}_{r}.json")
                    c_cmd = [a.chorus_bench, ",".join(ops), "--nprocs", str(np)] + common + ["--json", cj]
                    m_cmd = mpirun_base(np, extra) + [exe, ",".join(ops)] + common + ["--json", mj]
                    sides = [("chorus-bench", c_cmd, cj, None, runs_c), ("mpi_bench", m_cmd, mj, env, runs_m)]
                    if r % 2:
                        sides.reverse()
                    for label, cmd, js, e, acc in sides:
                        wait_idle(a.wait_idle)
                        rc, data = run_bench(cmd, f"{label} (round {r + 1}/{a.rounds})", js, logf, env=e)
                        failed |= rc != 0 or not data
                        acc.append(data)
            chorus, mpi = best_of(runs_c), best_of(runs_m)
            failed |= any(v["wrong"] for v in chorus.values()) or any(v["wrong"] for v in mpi.values())
            transports = next((d.get("transports_rank0") for d in runs_c if d.get("transports_rank0")), [])
            title = (f"{np} ranks, {load}" + (" (one extra busy-looping process)" if load == "hog" else "")
                     + f", float, sizes {a.minbytes}..{top} x{a.stepfactor}, iters {a.iters} warmup "
                     f"{a.warmup_iters} (cap {a.cap}/size), best of {a.rounds} alternating round"
                     + ("s" if a.rounds > 1 else "") + " per side")
            md.append(tables(chorus, mpi, ops, np, load, title, transports))
    log(f"\n# total time {time.time() - t_start:.0f} s\n")
    publish("\n".join(md), a.markdown, failed)


if __name__ == "__main__":
    main()
