"""What one teacher call and one FIRE step cost, per host: the data's price list.

    python benchmarks/teacher_cost.py [--hosts MoS2 hBN] [--repeats 5] [--threads 1]

For each host, one high-density defect configuration (10 % of the sites, the generator's
first one at that concentration) is evaluated ``--repeats`` times by each calculator
of ``--teachers`` (default: CHGNet's stock calculator, which also computes stress and
magnetic moments with a differentiable force graph, and this project's labelling
teacher, energy and forces only, first derivatives only); medians are printed. The
positions are rattled by 1e-4 Å before every call, so no calculator can reuse a cached
result. ``--fire-steps N`` also times N FIRE steps with the last teacher (the
generator's per-step cost, which adds the optimizer's own work).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import numpy as np

from ase_definet.core.hosts import get_host, host_names
from ase_definet.core.optimizers import get_optimizer
from ase_definet.data.configs import high_density_configs
from ase_definet.data.teacher import get_teacher

logger = logging.getLogger("teacher_cost")


def defect_structure(host_name: str, concentration: float = 0.10):
    """The generator's first configuration of ``host_name`` at ``concentration``."""
    host = get_host(host_name)
    configs = high_density_configs(host, 1)
    conf = min(configs, key=lambda c: abs(c.concentration - concentration))
    return conf.spec.apply(host.pristine())


def time_calls(atoms, calc, repeats: int, seed: int = 0) -> float:
    """Median seconds of an energy+forces evaluation (one warm-up call first)."""
    at = atoms.copy()
    at.calc = calc
    rng = np.random.default_rng(seed)
    at.get_forces()
    times = []
    for _ in range(repeats):
        at.positions = atoms.positions + rng.normal(scale=1e-4, size=atoms.positions.shape)
        t = time.perf_counter()
        at.get_potential_energy()
        at.get_forces()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_fire(atoms, calc, steps: int) -> float:
    """Seconds per FIRE step (the generator's optimizer), over ``steps`` steps."""
    at = atoms.copy()
    at.calc = calc
    at.get_forces()
    opt = get_optimizer("FIRE")(at, logfile=None)
    t = time.perf_counter()
    opt.run(fmax=1e-6, steps=steps)
    return (time.perf_counter() - t) / max(opt.nsteps, 1)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", nargs="+", default=None, help="default: all built-in hosts")
    p.add_argument("--teachers", nargs="+", default=["chgnet-stock", "chgnet"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fire-steps", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    calcs = {name: get_teacher(name) for name in args.teachers}
    rows = []
    for host in args.hosts or host_names():
        atoms = defect_structure(host)
        row = {"host": host, "atoms": len(atoms)}
        for name, calc in calcs.items():
            row[name] = time_calls(atoms, calc, args.repeats)
        if args.fire_steps:
            row["fire_step"] = time_fire(atoms, calcs[args.teachers[-1]], args.fire_steps)
        rows.append(row)
        logger.info("%s done", host)
    first, last = args.teachers[0], args.teachers[-1]
    print(f"Teacher cost, median of {args.repeats} calls, {args.threads} thread(s); "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    head = f"{'host':<8}{'atoms':>6}" + "".join(f"{n + ' s':>16}" for n in args.teachers)
    head += f"{'speed-up':>10}" + (f"{'FIRE s/step':>13}" if args.fire_steps else "")
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['host']:<8}{r['atoms']:>6}" + "".join(f"{r[n]:>16.3f}" for n in args.teachers)
        line += f"{r[first] / r[last]:>9.2f}x"
        if args.fire_steps:
            line += f"{r['fire_step']:>13.3f}"
        print(line)
    return rows


if __name__ == "__main__":
    main()
