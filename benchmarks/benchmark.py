"""DefiNet speed and scale against the teacher (CHGNet + FIRE), on this machine.

    python benchmarks/benchmark.py                       # CPU, default weights, full table
    python benchmarks/benchmark.py --sizes 8 16 --no-teacher --csv out.csv
    python benchmarks/benchmark.py --device cuda         # GPU figures (where one exists)

For MoS2 n x n supercells (n = 8, 16, 32, 64; 192 to 12,288 sites) with 10 % random
defects: graph building, the forward pass and the end-to-end time of a new
``DefiNetRelaxer`` from the weights' name, as a user runs it (medians over
``--repeats`` after a warm-up), the process's peak memory after each
size, batched throughput for 8x8 cells, and CHGNet + FIRE to 0.01 eV/Å on the 8x8 and
16x16 structures with the speed-up. Prints a table and writes a CSV.

The floor (``OMP_NUM_THREADS=1 python benchmarks/floor.py``, 1 thread, default weights,
8x8 MoS2: 192 sites, 3,584 edges, 3 stages x 4 layers): 5.7 GFLOP of matrix products
(about half of them per edge: the radial maps and the first layer of phi_q) and at least
~0.2 GB of traffic (30 MB of weights, one pass over node and edge state per layer); at
the ~100 GFLOP/s one thread reaches on these matmuls that is ~57 ms. Before issue 22 the
forward pass took ~600 ms of CPU time (~11x the floor: float32 denormals in the radial
basis, page faults on fresh edge tensors, unfused small ops); the inference-only path of
``model/inference.py`` takes ~150-220 ms (2.6-3.6x; the rest is elementwise edge work,
~2 GB moved through the caches). Timings on a shared 2-core machine, medians.
"""

from __future__ import annotations

import argparse
import csv
import logging
import platform
import resource
import statistics
import sys
import time
from dataclasses import replace

import torch

from ase_definet import DefectStructure, DefiNetRelaxer, get_model
from ase_definet.batch import relax_many
from ase_definet.core.fileio import atomic_path
from ase_definet.core.hosts import get_host
from ase_definet.core.predict import compiled, predict_sites
from ase_definet.data.configs import high_density_configs
from ase_definet.graph import collate
from ase_definet.model import get_backend, set_backend

logger = logging.getLogger("benchmark")


def structure(n: int, seed: int = 0):
    """(pristine n x n MoS2, DefectSpec with 10 % defects)."""
    host = replace(get_host("MoS2"), supercell=(n, n, 1))
    spec = high_density_configs(host, 1, seed=seed, concentrations=(0.10,))[0].spec
    return host.pristine(), spec


def timed(fn, repeats: int) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024


def bench_size(model, n: int, repeats: int, compile: bool = False,
               stages: int | None = None, name: str | None = None) -> dict:
    """Times for an n x n cell; end to end is what a user runs: ``DefiNetRelaxer(host,
    defects=spec, model=name).run()`` with the weights' name (``model`` itself if no
    name), a new relaxer each time."""
    host, spec = structure(n)
    s = DefectStructure.from_host(host, spec, model.elements)
    dev = next(model.parameters()).device
    t_graph = timed(lambda: s.graph(model.cutoff, model.max_neighbors), repeats)
    batch = collate([s.graph(model.cutoff, model.max_neighbors)]).to(dev)

    net = compiled(model) if compile else model

    def forward():
        with torch.inference_mode():
            net(batch, stages=stages)

    t_fwd = timed(forward, repeats)
    def relax():
        if compile:
            predict_sites(model, [DefectStructure.from_host(host, spec, model.elements)],
                          all_layers=True, compile=True, stages=stages)
        else:
            DefiNetRelaxer(host, defects=spec, model=name or model, logfile=None,
                           device=dev, stages=stages).run()

    t_e2e = timed(relax, repeats)
    return {"size": f"{n}x{n}", "sites": len(host), "edges": batch.edge_index.shape[1],
            "graph_ms": 1e3 * t_graph, "forward_ms": 1e3 * t_fwd,
            "relax_ms": 1e3 * t_e2e, "peak_mb": peak_memory_mb(dev)}


def bench_throughput(model, batch_size: int, n_structures: int, compile: bool = False,
                     stages: int | None = None) -> float:
    host, _ = structure(8)
    h = replace(get_host("MoS2"), supercell=(8, 8, 1))
    specs = [c.spec for c in high_density_configs(h, n_structures, seed=1,
                                                   concentrations=(0.10,))][:n_structures]
    items = [(host, sp) for sp in specs]
    kw = dict(model=model, batch_size=batch_size, progress=False, compile=compile,
              stages=stages)
    relax_many(items[:batch_size], **kw)
    t0 = time.perf_counter()
    relax_many(items, **kw)
    return n_structures / (time.perf_counter() - t0)


def bench_teacher(n: int, fmax: float = 0.01) -> tuple[float, int]:
    """Wall time (s) and steps of CHGNet + FIRE from the unrelaxed n x n structure."""
    from ase.optimize import FIRE

    from ase_definet.data.teacher import chgnet_calculator

    host, spec = structure(n)
    atoms = spec.apply(host)
    atoms.calc = chgnet_calculator()
    atoms.get_forces()  # model load and first call outside the timing
    atoms.calc.reset()
    opt = FIRE(atoms, logfile=None)
    t0 = time.perf_counter()
    opt.run(fmax=fmax, steps=3000)
    return time.perf_counter() - t0, opt.nsteps


def bench_model(name: str, args: argparse.Namespace) -> tuple[list[dict], float]:
    """Rows per size and the batched 8x8 throughput (structures/s) of one weights name."""
    model = get_model(name, args.device).eval()
    print(f"# model {name}: {model.config.layer_summary()}, F={model.config.hidden} "
          f"stages={args.stages or 1 + model.config.refine} of {1 + model.config.refine} "
          f"D={model.cutoff} N={model.max_neighbors}")
    rows = []
    for n in sorted(args.sizes):
        rows.append({"model": name} | bench_size(model, n, args.repeats, args.compile,
                                                 args.stages, name=name))
        logger.info("%s %s done", name, rows[-1]["size"])
    for r in rows:
        r["relax_vs_first"] = r["relax_ms"] / rows[0]["relax_ms"]
    tput = bench_throughput(model, args.batch_size, args.throughput_structures, args.compile,
                            args.stages)
    return rows, tput


def print_table(rows: list[dict], tput: float, args: argparse.Namespace) -> None:
    head = (f"{'size':>7}{'sites':>7}{'edges':>9}{'graph ms':>10}{'fwd ms':>9}{'relax ms':>10}"
            f"{'x first':>8}{'peak MB':>9}{'CHGNet+FIRE s':>15}{'steps':>7}{'speedup':>9}")
    print(f"## {rows[0]['model']}")
    print(head)
    for r in rows:
        teacher = (f"{r['chgnet_fire_s']:15.1f}{r['chgnet_steps']:7d}{r['speedup']:9.0f}"
                   if "speedup" in r else f"{'-':>15}{'-':>7}{'-':>9}")
        print(f"{r['size']:>7}{r['sites']:>7}{r['edges']:>9}{r['graph_ms']:10.1f}"
              f"{r['forward_ms']:9.1f}{r['relax_ms']:10.1f}{r['relax_vs_first']:8.1f}"
              f"{r['peak_mb']:9.0f}{teacher}")
    print(f"batched 8x8 throughput: {tput:.1f} structures/s (batch {args.batch_size}, "
          f"{args.throughput_structures} structures)")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["default"],
                   help="weights names or paths, timed one after the other in this run "
                        "beside the same teacher measurement (e.g. --model default fast)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--throughput-structures", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    p.add_argument("--scatter", default="auto", choices=["auto", "native", "torch_scatter"],
                   help="scatter backend (ase_definet.model.set_backend)")
    p.add_argument("--no-teacher", action="store_true", help="skip CHGNet + FIRE")
    p.add_argument("--stages", type=int, help="run only the first STAGES refinement stages "
                   "of the weights (default all)")
    p.add_argument("--teacher-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    set_backend(args.scatter)
    dev = torch.device(args.device)
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__} | {torch.get_num_threads()} CPU threads | device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    print(f"# medians of {args.repeats} after warm-up; scatter {get_backend(dev)}"
          + ("; torch.compile (end-to-end = predict_sites, no ASE wrapper)"
             if args.compile else ""))
    results = [bench_model(name, args) for name in args.model]
    if not args.no_teacher:
        for n in sorted(set(args.teacher_sizes) & set(args.sizes)):
            t, steps = bench_teacher(n)
            for rows, _ in results:
                for r in rows:
                    if r["size"] == f"{n}x{n}":
                        r |= {"chgnet_fire_s": t, "chgnet_steps": steps,
                              "speedup": t / (r["relax_ms"] / 1e3)}
    for rows, tput in results:
        print_table(rows, tput, args)
    all_rows = [r | {"throughput_8x8_per_s": tput} for rows, tput in results for r in rows]
    if args.csv:
        keys = list(dict.fromkeys(k for r in all_rows for k in r))  # first-seen order
        with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(all_rows)
        print(f"wrote {args.csv}")
    return all_rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
