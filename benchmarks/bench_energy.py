"""Benchmark of the streamed Hopfield energy against its floor (one matmul) and a naive N x M implementation.

    .venv/bin/python benchmarks/bench_energy.py            # N = M = 20000 at d = 784 and 3072 (several minutes)
    .venv/bin/python benchmarks/bench_energy.py --quick    # N = M = 4000: a minute

Times are best-of-``--repeats``, with every variant timed once per round (interleaved, the order rotated from
round to round), so that load from other processes hits all of them alike; the figures that matter are the ratios to the floor measured in the same run:

    floor  = one torch.matmul(queries, memories.T)   (the arithmetic the energy cannot avoid; it writes N x M)
    naive  = materialise the N x M logits (matmul or cdist), then torch.logsumexp

Peak extra memory is measured in a fresh subprocess per variant, as the rise of the process's peak RSS
(``ru_maxrss``) over its value just before the call (inputs already allocated, a small warm-up done): torch's CPU
allocations are invisible to tracemalloc. On CUDA the same is done with torch.cuda.max_memory_allocated.
Accuracy: fp32 energies against an independent fp64 dense evaluation for the first ``--check-rows`` queries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from hopfield_replay.runtime.devices import machine_description  # noqa: E402
from hopfield_replay.energy import beta_from_data, hopfield_energy  # noqa: E402

VARIANTS = {
    # name: (form, exclude_self, weighted)
    "inner": ("inner", False, False),
    "inner+loo": ("inner", True, False),
    "inner+w": ("inner", False, True),
    "distance": ("distance", False, False),
    "distance+loo": ("distance", True, False),
    "distance+w": ("distance", False, True),
    "distance+loo+w": ("distance", True, True),
}
NAIVE = ("naive:inner+loo", "naive:distance+loo")



def make_data(n: int, d: int, device: torch.device, seed: int = 0):
    """Gaussian clusters plus an offset (off-centre data, like pixels); the queries are the memories.

    Built in place, block by block, so that making the data leaves no temporary peak behind.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(64, d, generator=g).mul_(2.0).add_(0.5)
    x = torch.empty(n, d)
    for i in range(0, n, 1024):
        block = x[i : i + 1024]
        block.normal_(generator=g).add_(centres[torch.randint(0, 64, (len(block),), generator=g)])
    w = torch.rand(n, generator=g) + 0.5
    return x.to(device), w.to(device)


def beta_for(x: torch.Tensor) -> float:
    # 1 / median NN distance from a subsample (cheap); the exact rule is timed separately
    return beta_from_data(x[: min(len(x), 4000)])


def naive(name: str, x: torch.Tensor, w: torch.Tensor, beta: float) -> torch.Tensor:
    if name == "naive:inner+loo":
        logits = beta * (x @ x.T)
        logits.fill_diagonal_(-math.inf)
        return 0.5 * (x * x).sum(1) - torch.logsumexp(logits, dim=1) / beta
    logits = torch.cdist(x, x).pow_(2).mul_(-0.5 * beta)
    logits.fill_diagonal_(-math.inf)
    return -torch.logsumexp(logits, dim=1) / beta


def run_variant(name: str, x, w, beta):
    if name == "floor":
        return torch.matmul(x, x.T)
    if name == "beta_from_data":
        return beta_from_data(x)
    if name.startswith("naive:"):
        return naive(name, x, w, beta)
    form, loo, weighted = VARIANTS[name]
    return hopfield_energy(x, x, beta, form=form, exclude_self=loo, weights=w if weighted else None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_all(names, x, w, beta, repeats, device):
    best = {k: math.inf for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order: no fixed position effect
            sync(device)
            t0 = time.perf_counter()
            out = run_variant(k, x, w, beta)
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
            del out
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {best[k]:.2f}s" for k in names), flush=True)
    return best


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))


def memory_child(name: str, n: int, d: int, device: str, beta: float) -> None:
    """Run in a fresh process: print the peak extra memory (bytes) of one call."""
    dev = torch.device(device)
    x, w = make_data(n, d, dev)
    small, ws = x[:256].clone(), w[:256].clone()
    run_variant(name, small, ws, beta)  # warm-up: libraries' own buffers are not the variant's memory
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_variant(name, x, w, beta)
        torch.cuda.synchronize()
        print(json.dumps({"peak_extra": torch.cuda.max_memory_allocated() - base}))
        return
    try:  # reset the kernel's peak-RSS mark (VmHWM), then read it after the call
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _proc_status("VmRSS")
        run_variant(name, x, w, beta)
        peak = _proc_status("VmHWM")
    except OSError:  # no /proc: ru_maxrss (a lower bound if the process peaked higher before the call)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        run_variant(name, x, w, beta)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_extra": peak - base}))


def peak_memory(name: str, n: int, d: int, device: torch.device, beta: float) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, "--n", str(n), "--dims", str(d),
           "--device", str(device), "--beta", repr(beta)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra"]


def accuracy(x, w, beta, rows: int) -> dict[str, float]:
    """max |E32 - E64| / (|E64| + floor) over the first ``rows`` queries, E64 from a dense fp64 evaluation."""
    xd, wd = x.double().cpu(), w.double().cpu()
    k = min(rows, len(xd))
    q = xd[:k]
    c = xd.mean(0)
    res = {}
    for name, (form, loo, weighted) in VARIANTS.items():
        e32 = hopfield_energy(x, x, beta, form=form, exclude_self=loo, weights=w if weighted else None)[:k]
        if form == "inner":
            logits, base = beta * (q @ xd.T), 0.5 * (q * q).sum(1)
        else:
            logits, base = -0.5 * beta * torch.cdist(q - c, xd - c).pow(2), torch.zeros(k, dtype=torch.float64)
        if weighted:
            logits = logits + wd.log()
        if loo:
            logits[torch.arange(k), torch.arange(k)] = -math.inf
        e64 = base - torch.logsumexp(logits, 1) / beta
        floor = 1e-6 * float(0.5 * ((q - c) ** 2).sum(1).mean())  # fp32 cancellation scale of the expansion
        err = (e32.double().cpu() - e64).abs()
        res[name] = {"max_rel": float((err / e64.abs()).max()), "max_abs": float(err.max()),
                     "within_1e-5_rel_plus_floor": bool((err <= 1e-5 * e64.abs() + floor).all())}
    return res


def fmt_bytes(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (N = M = 4000)")
    ap.add_argument("--n", type=int, default=None, help="N = M (default 20000, 4000 with --quick)")
    ap.add_argument("--dims", type=int, nargs="+", default=[784, 3072])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--check-rows", type=int, default=1000)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive N x M baseline")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--beta", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = args.n or (4000 if args.quick else 20000)
    if args.memory_child:
        memory_child(args.memory_child, n, args.dims[0], args.device, args.beta)
        return
    device = torch.device(args.device)
    print(machine_description(device), flush=True)
    results = {"machine": machine_description(device), "n": n, "dims": {}}
    for d in args.dims:
        x, w = make_data(n, d, device)
        beta = beta_for(x)
        print(f"\nN = M = {n}, d = {d}, fp32, beta = {beta:.4g}", flush=True)
        names = ["floor", *VARIANTS, "beta_from_data", *([] if args.no_naive else NAIVE)]
        best = time_all(names, x, w, beta, args.repeats, device)
        mem = {}
        if not args.no_memory:
            for k in ["floor", "inner+loo", "distance+loo+w", *([] if args.no_naive else NAIVE)]:
                mem[k] = peak_memory(k, n, d, device, beta)
        acc = accuracy(x, w, beta, args.check_rows)
        floor = best["floor"]
        print(f"{'variant':<18}{'time':>9}{'/floor':>8}{'/naive':>8}{'peak extra':>12}{'max rel err':>13}")
        for k in names:
            naive_t = best.get("naive:distance+loo" if "distance" in k else "naive:inner+loo")
            vs_naive = f"{best[k] / naive_t:8.3f}" if naive_t and not k.startswith(("naive", "floor")) else " " * 8
            m = fmt_bytes(mem[k]) if k in mem else ""
            a = f"{acc[k]['max_rel']:.1e}" if k in acc else ""
            print(f"{k:<18}{best[k]:8.2f}s{best[k] / floor:8.3f}{vs_naive}{m:>12}{a:>13}")
        if mem and not args.no_naive:
            for ours, theirs in (("inner+loo", "naive:inner+loo"), ("distance+loo+w", "naive:distance+loo")):
                print(f"memory: {theirs} / {ours} = {mem[theirs] / max(mem[ours], 1):.1f}x")
        ok = all(v["within_1e-5_rel_plus_floor"] for v in acc.values())
        print(f"accuracy vs fp64 (first {min(args.check_rows, n)} rows): all within 1e-5 rel + 1e-6 * mean|q-c|^2/2: {ok}")
        results["dims"][str(d)] = {"beta": beta, "seconds": best, "ratio_to_floor": {k: v / floor for k, v in best.items()},
                                   "peak_extra_bytes": mem, "accuracy": acc}
        del x, w
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
