"""One rank of the parity suite: every collective through chorus (the default group) and Gloo (a
new_group over the same ranks), on the same inputs, compared element for element.

Run by test_parity.py as WORLD_SIZE processes; writes a JSON report to CHORUS_TEST_REPORT.
"""
import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

import chorus  # noqa: F401  (registers the backend)

R = dist.ReduceOp
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool]
SIZES = [1, 7, 1031]
FLOATS = {torch.float32, torch.float64, torch.float16, torch.bfloat16}

rank = int(os.environ["RANK"])
ws = int(os.environ["WORLD_SIZE"])
failures: list[str] = []
counts = {"cases": 0, "gloo_unsupported": 0}


def data(seed: int, n: int, dtype, small=False) -> torch.Tensor:
    """Deterministic values whose sums/products are exact in every dtype (small integers)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    lo, hi = (-2, 3) if small else (-8, 9)
    if dtype == torch.uint8:
        lo, hi = (0, 3) if small else (0, 30)
    return torch.randint(lo, hi, (n,), generator=g).to(dtype)


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def case(name: str, fn, groups):
    """fn(group) -> tensors to compare; run on Gloo then chorus, same inputs."""
    counts["cases"] += 1
    gloo_grp, chorus_grp = groups
    try:
        want = fn(gloo_grp)
    except Exception as e:  # Gloo does not support this: chorus must refuse it too, or agree locally
        counts["gloo_unsupported"] += 1
        try:
            fn(chorus_grp)
            got_err = None
        except Exception as ce:
            got_err = ce
        if got_err is None:
            failures.append(f"{name}: gloo raised ({str(e)[:80]}) but chorus did not")
        return
    try:
        got = fn(chorus_grp)
    except Exception as e:
        failures.append(f"{name}: chorus raised {type(e).__name__}: {e}")
        return
    if not same(got, want):
        failures.append(f"{name}: chorus {short(got)} != gloo {short(want)}")


def short(x):
    if isinstance(x, (list, tuple)):
        return [short(y) for y in x][:4]
    return f"{x.dtype}{list(x.shape)} {x.flatten()[:6].tolist()}"


def ops_for(dtype):
    ops = [R.SUM, R.PRODUCT, R.MIN, R.MAX]
    if dtype in FLOATS:
        ops.append(R.AVG)
    else:
        ops += [R.BAND, R.BOR, R.BXOR]
    return ops


def run_collectives(groups):
    n = ws
    for dtype in DTYPES:
        for size in SIZES:
            tag = f"{dtype}/{size}"
            for op in ops_for(dtype):
                small = op == R.PRODUCT

                def f(g, op=op, small=small):
                    t = data(rank * 101 + size, size, dtype, small)
                    dist.all_reduce(t, op=op, group=g)
                    return t

                case(f"all_reduce {tag} {op}", f, groups)
            root = (size + 1) % n

            def bcast(g):
                t = data(rank * 7 + size, size, dtype)
                dist.broadcast(t, group_src=root, group=g)
                return t

            case(f"broadcast {tag} root={root}", bcast, groups)

            for op in [R.SUM, R.MAX]:
                def red(g, op=op):
                    t = data(rank * 13 + size, size, dtype)
                    dist.reduce(t, group_dst=root, op=op, group=g)
                    # Only the root's result is defined (Gloo leaves partial sums on other ranks).
                    return t if rank == root else torch.empty(0)

                case(f"reduce {tag} {op} root={root}", red, groups)

            def ag_list(g):
                t = data(rank * 3 + size, size, dtype)
                outs = [torch.empty(size, dtype=dtype) for _ in range(n)]
                dist.all_gather(outs, t, group=g)
                return outs

            case(f"all_gather {tag}", ag_list, groups)

            def ag_tensor(g):
                t = data(rank * 5 + size, size, dtype)
                out = torch.empty(size * n, dtype=dtype)
                dist.all_gather_into_tensor(out, t, group=g)
                return out

            case(f"all_gather_into_tensor {tag}", ag_tensor, groups)

            def ag_inplace(g):
                out = torch.zeros(size * n, dtype=dtype)
                mine = out[rank * size:(rank + 1) * size]
                mine.copy_(data(rank * 5 + size, size, dtype))
                dist.all_gather_into_tensor(out, mine, group=g)
                return out

            case(f"all_gather_into_tensor in-place {tag}", ag_inplace, groups)

            for op in [R.SUM, R.MIN]:
                def rs_list(g, op=op):
                    ins = [data(rank * 17 + p + size, size, dtype) for p in range(n)]
                    out = torch.empty(size, dtype=dtype)
                    dist.reduce_scatter(out, ins, op=op, group=g)
                    return out

                case(f"reduce_scatter {tag} {op}", rs_list, groups)

                def rs_tensor(g, op=op):
                    inp = data(rank * 19 + size, size * n, dtype)
                    out = torch.empty(size, dtype=dtype)
                    dist.reduce_scatter_tensor(out, inp, op=op, group=g)
                    return out

                case(f"reduce_scatter_tensor {tag} {op}", rs_tensor, groups)

            def a2a_single_even(g):
                inp = data(rank * 23 + size, size * n, dtype)
                out = torch.empty(size * n, dtype=dtype)
                dist.all_to_all_single(out, inp, group=g)
                return out

            case(f"all_to_all_single even {tag}", a2a_single_even, groups)

            # Uneven: rank r sends (r + p + size) % 3 + (size > 1) rows of 2 elements to rank p.
            def cnt(src, dst):
                return (src + dst + size) % 3 + (1 if size > 1 else 0)

            def a2a_single_uneven(g):
                ins = [cnt(rank, p) for p in range(n)]
                outs = [cnt(p, rank) for p in range(n)]
                inp = data(rank * 29 + size, sum(ins) * 2, dtype).view(-1, 2)
                out = torch.empty(sum(outs), 2, dtype=dtype)
                dist.all_to_all_single(out, inp, outs, ins, group=g)
                return out

            case(f"all_to_all_single uneven {tag}", a2a_single_uneven, groups)

            def a2a_list(g):
                ins = [data(rank * 31 + p + size, cnt(rank, p), dtype) for p in range(n)]
                outs = [torch.empty(cnt(p, rank), dtype=dtype) for p in range(n)]
                if g is groups[0]:
                    # Gloo's list form is missing (torch 2.11) or needs equal sizes (2.15): the
                    # reference is Gloo's all_to_all_single over the concatenated blocks.
                    flat = torch.empty(sum(o.numel() for o in outs), dtype=dtype)
                    dist.all_to_all_single(flat, torch.cat(ins), [o.numel() for o in outs], [i.numel() for i in ins], group=g)
                    return list(flat.split([o.numel() for o in outs]))
                dist.all_to_all(outs, ins, group=g)
                return outs

            case(f"all_to_all {tag}", a2a_list, groups)

            def gather(g):
                t = data(rank * 37 + size, size, dtype)
                outs = [torch.empty(size, dtype=dtype) for _ in range(n)] if rank == root else None
                dist.gather(t, outs, group_dst=root, group=g)
                return outs if rank == root else [t]

            case(f"gather {tag} root={root}", gather, groups)

            def scatter(g):
                ins = [data(41 + p + size, size, dtype) for p in range(n)] if rank == root else None
                out = torch.empty(size, dtype=dtype)
                dist.scatter(out, ins, group_src=root, group=g)
                return out

            case(f"scatter {tag} root={root}", scatter, groups)

            def p2p(g):
                t = data(rank * 43 + size, size, dtype)
                got = torch.empty(size, dtype=dtype)
                nxt, prv = (rank + 1) % n, (rank - 1) % n
                ops = [dist.P2POp(dist.isend, t, group_peer=nxt, group=g), dist.P2POp(dist.irecv, got, group_peer=prv, group=g)]
                for w in dist.batch_isend_irecv(ops):
                    w.wait()
                return got

            case(f"batch_isend_irecv ring {tag}", p2p, groups)

        # Per dtype (one size): blocking send/recv, isend/irecv, coalesced forms, non-contiguous.
        def sendrecv(g):
            t = data(rank * 47, 11, dtype)
            got = torch.empty(11, dtype=dtype)
            if rank == 0:
                dist.send(t, group_dst=1, group=g)
                dist.recv(got, group_src=1, group=g)
            elif rank == 1:
                dist.recv(got, group_src=0, group=g)
                dist.send(t, group_dst=0, group=g)
            return got if rank < 2 else t

        case(f"send/recv {dtype}", sendrecv, groups)

        def isendrecv(g):
            t = data(rank * 53, 9, dtype)
            got = torch.empty(9, dtype=dtype)
            nxt, prv = (rank + 1) % n, (rank - 1) % n
            rw = dist.irecv(got, group_src=prv, group=g)  # post the receive first
            sw = dist.isend(t, group_dst=nxt, group=g)
            sw.wait()
            rw.wait()
            return got

        case(f"isend/irecv {dtype}", isendrecv, groups)

        def noncontig(g):
            base = data(rank * 59, 6 * 5, dtype).view(6, 5)
            t = base.t()  # non-contiguous view
            dist.all_reduce(t, op=R.MAX, group=g)
            outs = [torch.empty(6, 5, dtype=dtype).t() for _ in range(n)]  # non-contiguous outputs
            dist.all_gather(outs, t, group=g)
            return [base] + [o.contiguous() for o in outs]

        case(f"non-contiguous {dtype}", noncontig, groups)

        def coalesced(g):
            ts = [data(rank * 61 + i, 3 + i, dtype) for i in range(3)]
            ins = [data(rank * 67 + i, 2 + i, dtype) for i in range(3)]
            outs = [torch.empty((2 + i) * n, dtype=dtype) for i in range(3)]
            with dist._coalescing_manager(group=g, async_ops=True) as cm:
                for i, o in zip(ins, outs):
                    dist.all_gather_into_tensor(o, i, group=g)
            cm.wait()
            rs_in = [data(rank * 71 + i, (1 + i) * n, dtype) for i in range(2)]
            rs_out = [torch.empty(1 + i, dtype=dtype) for i in range(2)]
            with dist._coalescing_manager(group=g, async_ops=True) as cm:
                for i, o in zip(rs_in, rs_out):
                    dist.reduce_scatter_tensor(o, i, group=g)
            cm.wait()
            with dist._coalescing_manager(group=g, async_ops=True) as cm:
                for t in ts:
                    dist.all_reduce(t, group=g)
            cm.wait()
            return ts + outs + rs_out

        case(f"coalesced {dtype}", coalesced, groups)

        def async_future(g):
            t = data(rank * 73, 13, dtype)
            w = dist.all_reduce(t, op=R.MAX, async_op=True, group=g)
            fut = w.get_future()
            res = fut.wait()
            return [t, res[0]]

        case(f"async get_future {dtype}", async_future, groups)


def expect_error(name: str, fn, *needles: str):
    try:
        fn()
    except Exception as e:
        msg = str(e)
        if not all(s.lower() in msg.lower() for s in needles):
            failures.append(f"bad call {name}: message {msg!r} lacks {needles}")
        return
    failures.append(f"bad call {name}: no exception")


def run_bad_calls():
    n = ws
    f = torch.ones(4)
    expect_error("all_gather wrong list length", lambda: dist.all_gather([torch.empty(4)] * (n + 1), f), "entries")
    expect_error("all_gather_into_tensor wrong size", lambda: dist.all_gather_into_tensor(torch.empty(4 * n + 1), f), "elements")
    expect_error("all_gather dtype mismatch", lambda: dist.all_gather([torch.empty(4, dtype=torch.int32) for _ in range(n)], f), "dtype")
    expect_error("reduce_scatter wrong list length", lambda: dist.reduce_scatter(torch.empty(4), [torch.ones(4)] * (n + 1)), "entries")
    expect_error("reduce_scatter_tensor wrong size", lambda: dist.reduce_scatter_tensor(torch.empty(3), torch.ones(4 * n)), "elements")
    expect_error("all_to_all_single bad splits", lambda: dist.all_to_all_single(torch.empty(n), torch.ones(n), [1] * n, [2] * n), "split")
    expect_error("PREMUL_SUM", lambda: dist.all_reduce(f.clone(), op=dist._make_nccl_premul_sum(2.0)), "PREMUL_SUM")
    expect_error("BAND on float", lambda: dist.all_reduce(f.clone(), op=R.BAND), "not supported")
    expect_error("unsupported dtype", lambda: dist.all_reduce(torch.ones(2, dtype=torch.complex128).real.to(torch.uint32), op=R.SUM), "not supported")
    expect_error("broadcast bad root", lambda: dist.distributed_c10d._get_default_group().broadcast([f.clone()], _bopts(n + 3)).wait(), "out of range")
    expect_error("send to self", lambda: dist.distributed_c10d._get_default_group().send([f], rank, 0).wait(), "itself")
    expect_error("recv any source", lambda: dist.recv(f.clone()), "any source")
    # The group still works after every refused call.
    t = torch.ones(3)
    dist.all_reduce(t)
    if not torch.equal(t, torch.full((3,), float(n))):
        failures.append(f"all_reduce after bad calls gave {t}")
    # Ranks disagreeing on a collective's arguments: an error, not a hang (own group: it is unusable after).
    g = dist.new_group(backend="chorus")
    mism = torch.ones(5 + rank)
    expect_error("count mismatch across ranks", lambda: dist.all_reduce(mism, group=g), "disagree")


def _bopts(root):
    o = dist.BroadcastOptions()
    o.rootRank = root
    return o


def main():
    store = dist.TCPStore("127.0.0.1", int(os.environ["CHORUS_TEST_STORE_PORT"]), ws, is_master=False, timeout=timedelta(seconds=120))
    dist.init_process_group("chorus", store=store, rank=rank, world_size=ws, timeout=timedelta(seconds=60))
    gloo = dist.new_group(backend="gloo")
    default = dist.distributed_c10d._get_default_group()
    assert dist.get_backend(default) == "chorus", dist.get_backend(default)
    sub = dist.new_group(ranks=list(range(ws)), backend="chorus")
    try:
        run_collectives((gloo, default))
        # A chorus subgroup (new_group) against the same Gloo group.
        def sub_case(g):
            t = data(rank * 79, 257, torch.float32)
            dist.all_reduce(t, group=g)
            return t

        case("new_group all_reduce", lambda g: sub_case(sub if g is default else g), (gloo, default))
        run_bad_calls()
    except Exception:
        failures.append("worker crashed: " + traceback.format_exc())
    report = {"rank": rank, "failures": failures, **counts}
    with open(os.environ["CHORUS_TEST_REPORT"], "w") as fh:
        json.dump(report, fh)
    dist.barrier(group=gloo)
    print("destroying", flush=True)
    dist.destroy_process_group()
    print("destroyed", flush=True)
    return 0


if __name__ == "__main__":
    import _worker_exit

    _worker_exit.run(main)
