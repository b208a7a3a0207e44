"""DDP training over chorus through a kill -9 and a replacement (test_ft_training.py).

Every rank trains the same small regression model (4 MiB of float32 parameters) with
DistributedDataParallel on CPU. Its gradient buckets (bucket_cap_mb=1) are all-reduced in place, all at or
above the fault-tolerance save limit (1 MiB, CHORUS_FT_SAVE_LIMIT, where chorus stops saving in-place
inputs): 1.02 MiB, 2 MiB and, last, exactly 1 MiB. Per step a rank runs, in this order (the step's
collectives):

  1. ctrl: all_reduce MAX of int64[world + 2]: [needs-state flag of each rank..., step, DDP instance];
  2. forward and backward; DDP's buckets are all-reduced by a comm hook (async, in bucket order);
  3. compute: rank FT_SLOW_RANK sleeps FT_SLOW_MS longer (it is late for the next collective);
  4. metric: all_gather_into_tensor of float64[2] = [local loss, step] (16 bytes).

How a user loop handles failures (what this worker implements)
---------------------------------------------------------------
Under policy `shrink` a collective during which a rank dies either completes over the survivors
(`chorus.get_failed_ranks(work)` names the dead rank once, `chorus.get_contributors(work)` the ranks
in the result) or raises chorus.ChorusError identically on every survivor. DDP does not hand out its
Works, so the gradient buckets go through a comm hook (`ft_allreduce_hook`) that issues the
all_reduce with async_op=True, records (failed, contributors, result digest) or the error, divides
the sum by the number of contributors, and never lets an error reach DDP's reducer (an exception in
backward leaves the reducer expecting a finished reduction). The step is *valid* when every
collective of the step succeeded, none reported a failed rank, and all ran over the same
contributors. Then the optimizer steps. Otherwise the step is redone on the same batch (zero_grad,
forward, backward, ...): the collective outcomes are identical on every survivor, so they all redo
the same steps, and their parameters never diverge. A failed step still issues all of its
collectives (the hook swallows errors, the metric all_gather always runs), so every step issues the
same sequence of collectives; the replacement relies on that (below). A step whose collectives fail
MAX_FAILED_ATTEMPTS times in a row means the group is broken (e.g. chorus reported a Mismatch): the
rank gives up (exit 5) instead of spinning.

Joining (the protocol)
----------------------
The replacement starts with CHORUS_JOIN=1 and is admitted by the survivors between two collectives,
which may be in the middle of a step (say between two bucket all_reduces of a backward). It must
then issue exactly the collectives the survivors issue. So:

* Plan. From the third step of a DDP instance on (DDP rebuilds its buckets at its second forward, with
  a broadcast of the bucket order from rank 0 that the hook does not see), every step issues the same
  collectives. Once per instance, each rank checks that a step issued exactly the collectives it
  recorded (chorus.get_ops_completed() before and after) and writes the plan to the store: the
  collective count at that step's start and each collective's (kind, dtype, numel, reduce op).
* Marks. Every attempt marks its phases with chorus.mark(attempt * 4 + phase): phase 0 before the ctrl
  all_reduce, then phase 1 (train: buckets and metric) or phase 2 (sync: the broadcast) once the ctrl
  result chose. The survivors' marks reach a replacement with the decision that admits it.
* Catch up. The replacement reads chorus.get_resume_point(): (marker, done), the survivors' last
  collective before its first was the done-th after that mark. Phase 0: they ran the ctrl and train
  next; phase 1: they ran done collectives of the training body; phase 2: the sync is complete. It
  issues the rest of that step's collectives (their kinds from the plan) with zero tensors (recording their outcomes, which the test
  compares with the survivors'). The survivors see the contributors change in the middle of the step,
  so the step is invalid and they redo it: the replacement's zeros never reach the weights.
* Sync at a step boundary. The replacement then runs the ctrl all_reduce with its needs-state flag set.
  Every member sees the flag in the same collective result, so all of them, at the same point, run the
  sync: a broadcast of all parameters (flat float32, in place, 4 MiB) from the lowest rank whose
  flag is clear, the agreed step (MAX of the survivors' step), then each rank builds a *new* module with
  those weights, a new DDP with init_sync=False (its own init sync would broadcast from rank 0, which
  may be the replacement with fresh weights, and would verify shapes with collectives of its own) and a
  new optimizer (plain SGD: no state to transfer). Survivors drop their old DDP (its autograd hooks sit
  on the old module's parameters, which no forward uses any more). Afterwards every rank is in the same
  place: a fresh DDP instance, the same weights, the same step; they go on as before.

The loop stops when FT_REJOINS syncs happened and FT_AFTER valid steps followed the last one (an agreed
condition: every member sees the same outcomes). Then the ranks all_gather a checksum of their
parameters (they must be equal) and write a JSON report (CHORUS_TEST_REPORT): every attempt (kind,
step, collective count at its start, each collective's outcome, valid, global loss), the catch-up of
a replacement, the final parameter digest.

Env: RANK, WORLD_SIZE, CHORUS_TEST_STORE_PORT, CHORUS_TEST_REPORT, CHORUS_JOIN (replacement),
FT_REJOINS (syncs to expect, default 1), FT_AFTER (valid steps after the last sync, default 15),
FT_SLOW_RANK (default 1), FT_SLOW_MS (default 30), FT_MAX_SECONDS (give up, default 150).
"""
import hashlib
import json
import os
import random
import sys
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import chorus

rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
joining = os.environ.get("CHORUS_JOIN") == "1"
REJOINS = int(os.environ.get("FT_REJOINS", "1"))
AFTER = int(os.environ.get("FT_AFTER", "15"))
SLOW_RANK = int(os.environ.get("FT_SLOW_RANK", "1"))
SLOW_MS = float(os.environ.get("FT_SLOW_MS", "30"))
MAX_SECONDS = float(os.environ.get("FT_MAX_SECONDS", "150"))
BUCKET_MB = 1.0
LR = 0.1
BATCH, D_IN, D_OUT = 32, 256, 8
PLAN_KEY = "ddpft/plan"
MAX_FAILED_ATTEMPTS = 3

report = {"rank": rank, "joining": joining, "attempts": [], "catch_up": None}


def log(msg):
    print(msg, flush=True)


def build():
    # Buckets (cap 1 MiB, filled in reverse parameter order): [fc4, fc3.weight] 1.02 MiB, [fc2] 2 MiB,
    # [fc1.weight] exactly 1 MiB, the last before the metric all_gather.
    return nn.Sequential(nn.Linear(D_IN, 1024, bias=False), nn.Tanh(), nn.Linear(1024, 512), nn.Tanh(),
                         nn.Linear(512, 512, bias=False), nn.Tanh(), nn.Linear(512, D_OUT))


_tg = torch.Generator().manual_seed(7)
TEACHER = (torch.randn(D_IN, 32, generator=_tg) / D_IN ** 0.5, torch.randn(32, D_OUT, generator=_tg))


def batch(r, step):
    g = torch.Generator().manual_seed(1_000_003 * step + r)
    x = torch.randn(BATCH, D_IN, generator=g)
    return x, torch.tanh(x @ TEACHER[0]) @ TEACHER[1]


def digest(t):
    return hashlib.sha1(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def err_text(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def outcome(rec, work, out):
    rec["failed"] = chorus.get_failed_ranks(work)
    rec["contributors"] = chorus.get_contributors(work)
    rec["digest"] = digest(out)


def op_record(kind, t, op=None):
    return {"kind": kind, "dtype": str(t.dtype).replace("torch.", ""), "numel": t.numel(), "op": op}


class Recorder:
    """The collectives of the current attempt, in issue order (the hook appends from autograd's
    thread; outcomes are filled in when each completes)."""

    def __init__(self):
        self.ops = []
        self.lock = threading.Lock()

    def add(self, rec):
        with self.lock:
            self.ops.append(rec)
        return rec


def ft_allreduce_hook(rec: Recorder, bucket):
    buf = bucket.buffer()
    r = rec.add(op_record("all_reduce", buf, "sum"))
    try:
        work = dist.all_reduce(buf, async_op=True)
    except chorus.ChorusError as e:
        r["error"] = err_text(e)
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut

    def done(fut):
        try:
            out = fut.value()[0]
            outcome(r, work, out)
            return out.div_(max(1, len(r["contributors"])))
        except Exception as e:  # noqa: BLE001 -- recorded; the step is then redone
            r["error"] = err_text(e)
            return buf

    return work.get_future().then(done)


def run_op(rec: Recorder, kind, t, out=None, op=None, src=None):
    """One collective with async_op=True, its outcome recorded. Returns True on success."""
    r = rec.add(op_record(kind, t, op))
    try:
        if kind == "all_reduce":
            work = dist.all_reduce(t, op=getattr(dist.ReduceOp, op.upper()), async_op=True)
        elif kind == "all_gather":
            work = dist.all_gather_into_tensor(out, t, async_op=True)
        elif kind == "broadcast":
            work = dist.broadcast(t, src, async_op=True)
        else:
            raise ValueError(kind)
        work.wait()
        outcome(r, work, t if out is None else out)
        return True
    except chorus.ChorusError as e:
        r["error"] = err_text(e)
        return False


def ctrl_tensor(step, instance):
    """[needs-state flag of each rank..., step, DDP instance]; all-reduced with MAX. A rank without
    state (step None) sets its flag and contributes -1 for the rest."""
    t = torch.zeros(n + 2, dtype=torch.int64)
    if step is None:
        t[rank], t[n], t[n + 1] = 1, -1, -1
    else:
        t[n], t[n + 1] = step, instance
    return t


def mirror(rec: Recorder, plan_ops):
    """Issues collectives shaped like `plan_ops` with zeros (a replacement catching up)."""
    for kind, dtype, numel, op in plan_ops:
        t = torch.zeros(numel, dtype=getattr(torch, dtype))
        if kind == "all_gather":
            run_op(rec, kind, t, out=torch.zeros(numel * n, dtype=t.dtype))
        elif kind == "all_reduce" and op == "max":
            run_op(rec, kind, ctrl_tensor(None, None), op=op)
        else:
            run_op(rec, kind, t, op=op)


class Trainer:
    """One DDP instance over `module`, with its hook's recorder and its optimizer."""

    def __init__(self, module, init_sync, instance):
        self.instance = instance
        self.rec = Recorder()
        self.ddp = DDP(module, bucket_cap_mb=BUCKET_MB, init_sync=init_sync)
        self.ddp.register_comm_hook(self, lambda state, bucket: ft_allreduce_hook(state.rec, bucket))
        self.opt = torch.optim.SGD(self.ddp.parameters(), lr=LR)
        self.attempts = 0  # of this instance
        self.plan_written = False

    def flat(self):
        return torch.cat([p.detach().reshape(-1) for p in self.ddp.module.parameters()])


def main():
    t_start = time.time()
    rng = random.Random(f"{rank}-{os.getpid()}-{time.time()}")
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), n + 2, is_master=False, timeout=timedelta(seconds=60))
    # CHORUS_JOIN=1 (honoured by the backend factory) makes this init a join.
    dist.init_process_group("chorus", store=store, rank=rank, world_size=n, timeout=timedelta(seconds=30),
                            pg_options=chorus.Options(failure_policy="shrink", heartbeat_ms=50, heartbeat_timeout_ms=1000))
    ops0 = chorus.get_ops_completed()
    log(f"start rank {rank} join {int(joining)} ops {ops0} active {chorus.get_active_ranks()}")
    report["start_ops"] = ops0

    trainer = None
    step = 0
    syncs = 0
    valid_since_sync = 0
    failure_seen = False
    errored = 0  # attempts in a row with a failing collective
    if not joining:
        torch.manual_seed(0)
        module = build()
        with torch.no_grad():  # rank-dependent start: DDP's init sync (instance 0) must fix it
            for p in module.parameters():
                p.add_(rank * 0.01)
        trainer = Trainer(module, init_sync=True, instance=0)
    else:
        # Catch up to the survivors' step boundary (see the docstring).
        plan = json.loads(store.get(PLAN_KEY).decode())
        L = len(plan["ops"])
        at = chorus.get_resume_point()
        if at is None:
            raise RuntimeError("joined without a resume point: the survivors marked nothing")
        marker, done = at
        phase = marker % 4
        # Where the survivors are inside a step of the plan: after the ctrl plus `done` of the body.
        pos = {0: done, 1: 1 + done, 2: L}[phase] % L
        rec = Recorder()
        mirror(rec, plan["ops"][pos:] if pos else [])
        report["catch_up"] = {"ops_start": ops0, "marker": marker, "done": done, "pos": pos, "plan_len": L, "ops": rec.ops}
        log(f"joined at collective {ops0}: mark {marker} (phase {phase}), {done} done: position {pos} of a {L}-collective step; "
            f"caught up with {len(rec.ops)} collectives")
        if chorus.get_ops_completed() != ops0 + len(rec.ops):
            raise RuntimeError(f"catch-up issued {chorus.get_ops_completed() - ops0} collectives, recorded {len(rec.ops)}")
        plan_ops = plan["ops"]

    attempt = 0
    while True:
        attempt += 1
        if syncs >= REJOINS and valid_since_sync >= AFTER:
            break
        if time.time() - t_start > MAX_SECONDS:
            log(f"gave up after {MAX_SECONDS} s: syncs {syncs}, valid steps since {valid_since_sync}")
            write_report()
            return 4
        rec = trainer.rec if trainer is not None else Recorder()
        rec.ops = []
        ops_start = chorus.get_ops_completed()
        att = {"ops_start": ops_start, "step": step, "instance": trainer.instance if trainer else None}

        # 1. ctrl (phase 0 of the attempt's marks)
        chorus.mark(attempt * 4)
        ctrl = ctrl_tensor(None, None) if trainer is None else ctrl_tensor(step, trainer.instance)
        ctrl_ok = run_op(rec, "all_reduce", ctrl, op="max")
        if ctrl_ok and int(ctrl[:n].max()) > 0:
            # Sync: every member saw the same flags in the same result.
            chorus.mark(attempt * 4 + 2)
            members = rec.ops[0]["contributors"]
            src = min(r for r in members if int(ctrl[r]) == 0)
            step = int(ctrl[n])
            flat = trainer.flat() if trainer is not None else torch.zeros(sum(p.numel() for p in build().parameters()))
            if not run_op(rec, "broadcast", flat, src=src):
                raise RuntimeError(f"the sync's broadcast failed: {rec.ops[-1]['error']}")
            module = build()
            torch.nn.utils.vector_to_parameters(flat, module.parameters())
            instance = int(ctrl[n + 1]) + 1
            old = trainer
            trainer = Trainer(module, init_sync=False, instance=instance)
            del old
            syncs += 1
            valid_since_sync = 0
            att.update(kind="sync", instance=instance, ops=rec.ops, src=src, members=members, valid=True, loss=None, step=step,
                       issued=chorus.get_ops_completed() - ops_start)
            report["attempts"].append(att)
            log(f"sync at collective {ops_start}: from rank {src} to {members}, step {step}, instance {instance}")
            continue
        chorus.mark(attempt * 4 + 1)
        if trainer is None:
            # Still without state (the ctrl failed): issue the rest of a step, then try again.
            mirror(rec, plan_ops[1:])
            att.update(kind="mirror", ops=rec.ops, valid=False, loss=None, issued=chorus.get_ops_completed() - ops_start)
            report["attempts"].append(att)
            errored += 1
            if errored >= MAX_FAILED_ATTEMPTS:
                log(f"giving up: {errored} ctrl all_reduces in a row failed; the last: {rec.ops[0]['error']}")
                write_report()
                return 5
            continue

        # 2. forward, backward (the hook all-reduces the buckets)
        trainer.attempts += 1
        trainer.opt.zero_grad(set_to_none=True)
        x, y = batch(rank, step)
        loss = nn.functional.mse_loss(trainer.ddp(x), y)
        loss.backward()
        # 3. compute between collectives: one rank is late
        time.sleep((SLOW_MS if rank == SLOW_RANK else 0) / 1000 + rng.uniform(0, 0.004))
        # 4. metric
        metric = torch.tensor([loss.item(), float(step)], dtype=torch.float64)
        gathered = torch.zeros(2 * n, dtype=torch.float64)
        run_op(rec, "all_gather", metric, out=gathered)

        ops = rec.ops
        issued = chorus.get_ops_completed() - ops_start
        ok = all("error" not in o for o in ops)
        valid = ok and all(o["failed"] == [] and o["contributors"] == ops[0]["contributors"] for o in ops)
        valid = valid and rank in ops[0]["contributors"]
        gl = None
        if valid:  # (in an invalid step a replacement catching up may have sent zeros)
            members = ops[-1]["contributors"]
            steps_seen = {r: gathered[2 * r + 1].item() for r in members}
            if any(s != step for s in steps_seen.values()):
                raise RuntimeError(f"step {step}: the members are at different steps {steps_seen} (desync)")
            gl = sum(gathered[2 * r].item() for r in members) / len(members)
        if not valid and not failure_seen:
            failure_seen = True
            log(f"failure seen at collective {ops_start}: " + "; ".join(
                f"{o['kind']} {o.get('error') or ('failed ' + str(o['failed']) + ' contributors ' + str(o['contributors']))}" for o in ops))
        att.update(kind="train", ops=ops, valid=valid, loss=gl, issued=issued, local_loss=loss.item())
        report["attempts"].append(att)
        # A failure makes one step fail; failing again and again means the group is broken (say, ranks
        # that disagree on the sequence of collectives): stop rather than spin.
        errored = errored + 1 if not ok else 0
        if errored >= MAX_FAILED_ATTEMPTS:
            first = next(o["error"] for o in ops if "error" in o)
            log(f"giving up: {errored} attempts in a row had failing collectives; the last: {first}")
            write_report()
            return 5
        if valid:
            trainer.opt.step()
            log(f"step {step} loss {gl:.6f} collective {ops_start} members {ops[0]['contributors']}")
            step += 1
            valid_since_sync += 1
        # The plan (see the docstring), once DDP's buckets are final.
        if trainer.attempts >= 3 and not trainer.plan_written and issued == len(ops):
            plan = {"instance": trainer.instance, "start": ops_start,
                    "ops": [[o["kind"], o["dtype"], o["numel"], o["op"]] for o in ops]}
            store.set(PLAN_KEY, json.dumps(plan))
            trainer.plan_written = True
            report["plan"] = plan

    # The end: every rank's parameters must be identical.
    flat = trainer.flat().double()
    check = torch.stack([flat.sum(), (flat * torch.arange(flat.numel(), dtype=torch.float64).remainder(977)).sum()])
    allc = torch.zeros(2 * n, dtype=torch.float64)
    dist.all_gather_into_tensor(allc, check)
    report["checksums"] = allc.tolist()
    report["param_digest"] = digest(trainer.flat())
    report["final_step"] = step
    report["ops_completed"] = chorus.get_ops_completed()
    report["active"] = chorus.get_active_ranks()
    log(f"done step {step} ops {report['ops_completed']} active {report['active']} digest {report['param_digest']}")
    write_report()
    dist.destroy_process_group()
    return 0


def write_report():
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as f:
        json.dump(report, f)


def guarded():
    try:
        return main()
    except BaseException:
        report["error"] = traceback.format_exc()
        log(report["error"])
        write_report()
        return 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _worker_exit

    _worker_exit.run(guarded)
