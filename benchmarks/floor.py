"""The floor of one DefiNet forward pass: operations and bytes, and how far today's time is.

    OMP_NUM_THREADS=1 python benchmarks/floor.py            # default weights, 8x8 MoS2
    python benchmarks/floor.py --size 16 --threads 2 --repeats 9

Counts every aten operation of one inference forward pass (the structure of
``benchmarks/benchmark.py``: n x n MoS2 with 10 % defects) with a dispatch mode:
matrix-product FLOPs (2 M N K), elementwise results, and bytes read and written
(inputs and outputs of every operation, views excluded). The floor is a roofline on
this machine: the matrix-product FLOPs at the single-thread rate of a matmul of the
layer's shape (measured here), or the bytes of the weights plus one pass over the node
and edge state at the measured copy bandwidth, whichever is larger; elementwise work is
assumed fused away. Today's time is the median CPU time of the forward pass (process
time, so other load on the machine counts less), and the ratio says how far it is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import structure

from ase_definet import DefectStructure, get_model
from ase_definet.graph import collate

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}
VIEWS = {"view", "_unsafe_view", "t", "transpose", "slice", "select", "unbind", "split",
         "split_with_sizes", "expand", "as_strided", "unsqueeze", "squeeze", "alias",
         "detach", "permute", "reshape", "lift_fresh"}


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class Counts(TorchDispatchMode):
    """FLOPs of matrix products, elementwise results and bytes moved, per aten op."""

    def __init__(self):
        super().__init__()
        self.flops = Counter()
        self.elems = Counter()
        self.bytes = Counter()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in VIEWS:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.calls[name] += 1
        self.bytes[name] += sum(map(_nbytes, ins)) + sum(map(_nbytes, outs))
        if name == "linear":  # not decomposed under inference_mode
            self.flops[name] += 2 * args[0].numel() * args[1].shape[0]
        elif name in MATMULS:
            a, b = args[-2], args[-1]  # mm(a, b), addmm(bias, a, b); out= is a kwarg
            self.flops[name] += 2 * a.numel() * b.shape[-1]
        else:
            self.elems[name] += sum(t.numel() for t in outs)
        return out


def gemm_rate(m: int, k: int, n: int, repeats: int = 20) -> float:
    """Measured FLOP/s of an (m, k) x (k, n) float32 matmul on this thread count."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        torch.mm(a, b, out=out)
        ts.append(time.process_time() - t0)
    return 2 * m * k * n / max(statistics.median(ts), 1e-9)


def copy_rate(mb: int = 64) -> float:
    """Measured bytes/s (read + write) of a large float32 copy."""
    x = torch.randn(mb * 2**18)
    y = torch.empty_like(x)
    y.copy_(x)
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        y.copy_(x)
        ts.append(time.perf_counter() - t0)
    return 2 * x.numel() * 4 / statistics.median(ts)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = get_model(args.model, "cpu").eval()
    host, spec = structure(args.size)
    s = DefectStructure.from_host(host, spec, model.elements)
    batch = collate([s.graph(model.cutoff, model.max_neighbors)])
    n, n_edges = batch.positions.shape[0], batch.edge_index.shape[1]
    F = model.config.hidden

    def forward():
        with torch.inference_mode():
            return model(batch)

    forward()
    counts = Counts()
    with counts:
        forward()
    flops = sum(counts.flops.values())
    weights = sum(_nbytes(t) for t in model.state_dict().values())
    layers = len(model.layers) * (1 + model.config.refine)
    # one pass per layer over the node state (x, vec: 4F per node, read and written)
    # and the per-edge tables it gathers (3F + F per edge, written and read)
    state = layers * 4 * (2 * n * 4 * F + 2 * n_edges * 4 * F)
    rate = gemm_rate(n_edges if n_edges < 4096 else 4096, F, F)
    bandwidth = copy_rate()
    t_flops, t_bytes = flops / rate, (weights + state) / bandwidth
    ts = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        forward()
        ts.append(time.process_time() - t0)
    today = statistics.median(ts)
    floor = max(t_flops, t_bytes)
    res = {"sites": n, "edges": n_edges, "layers": layers, "matmul_gflop": flops / 1e9,
           "elementwise_mresults": sum(counts.elems.values()) / 1e6,
           "moved_mb": sum(counts.bytes.values()) / 1e6, "weights_mb": weights / 1e6,
           "floor_mb": (weights + state) / 1e6, "gemm_gflops": rate / 1e9,
           "copy_gbs": bandwidth / 1e9, "floor_ms": 1e3 * floor, "today_ms": 1e3 * today,
           "gap": today / floor}
    print(f"# {args.model}: F={F}, {layers} layers; {args.size}x{args.size} MoS2, {n} sites, "
          f"{n_edges} edges; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"matrix products   {res['matmul_gflop']:8.2f} GFLOP   "
          f"(at {res['gemm_gflops']:.0f} GFLOP/s measured: {1e3 * t_flops:.0f} ms)")
    print(f"elementwise       {res['elementwise_mresults']:8.1f} M results")
    print(f"bytes moved today {res['moved_mb']:8.0f} MB      floor {res['floor_mb']:.0f} MB "
          f"(weights {res['weights_mb']:.0f} MB; at {res['copy_gbs']:.1f} GB/s: "
          f"{1e3 * t_bytes:.0f} ms)")
    print(f"floor {res['floor_ms']:.0f} ms, today {res['today_ms']:.0f} ms (median CPU time "
          f"of {args.repeats}): {res['gap']:.2f}x the floor")
    top = sorted(counts.bytes, key=counts.bytes.get, reverse=True)[:6]
    print("most bytes: " + ", ".join(f"{k} {counts.bytes[k] / 1e6:.0f} MB" for k in top))
    return res


if __name__ == "__main__":
    main()
