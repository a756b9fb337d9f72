"""How precisely does the teacher pin down a relaxed structure? The label-noise floor.

    python benchmarks/label_noise.py [--hosts MoS2 GaSe] [--rattle 0.03] [--seeds 2]

Each pristine host supercell (an exact stationary point of the teacher, forces below
1e-3 eV/Å) is rattled (Gaussian, ``--rattle`` Å) and relaxed back with the data's
procedure (FIRE to 0.01 eV/Å, fixed cell). Printed per host: the host's own max force,
FIRE steps, the energy found relative to the host, and the mean distance of the result
from the host. On a stable host this distance is the precision of a label (a coordinate
MAE below it is noise); an energy *below* the host's means the flat host is a saddle
point of the teacher, so defect relaxations of that host also pick up a spontaneous
distortion that no model can predict from the unrelaxed input.

    python benchmarks/label_noise.py --pairs data/InSe_high_001.db --n 6 --rattle 0.001

With ``--pairs``, stored defect pairs are relaxed again from their unrelaxed structure
rattled by ``--rattle`` Å: a distance near zero from the stored relaxed positions means
the teacher's answer is a deterministic function of the input, not a coin toss.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics

import numpy as np

from ase_definet.core.hosts import get_host, host_names
from ase_definet.data.label import relax_fixed_cell
from ase_definet.data.teacher import get_teacher

logger = logging.getLogger("label_noise")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", nargs="+", default=None, help="default: all built-in hosts")
    p.add_argument("--rattle", type=float, default=0.03, help="rattle amplitude, Å")
    p.add_argument("--seeds", type=int, nargs="+", default=[2])
    p.add_argument("--teacher", default="chgnet")
    p.add_argument("--fmax", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pairs", default=None, help="an ase.db file of stored pairs to relabel")
    p.add_argument("--n", type=int, default=6, help="with --pairs: the first N pairs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    calc = get_teacher(args.teacher)
    if args.pairs:
        return relabel_pairs(args.pairs, args.n, args.rattle, args.seeds[0], calc, args.fmax)
    rows = []
    for name in args.hosts or host_names():
        host = get_host(name).pristine()
        host.calc = calc
        f_host = float(np.linalg.norm(host.get_forces(), axis=1).max())
        e_host = float(host.get_potential_energy())
        for seed in args.seeds:
            start = host.copy()
            start.rattle(args.rattle, seed=seed)
            res = relax_fixed_cell(start, calc, fmax=args.fmax, steps=2000)
            d = np.linalg.norm(res.positions - host.positions, axis=1)
            rows.append({"host": name, "sites": len(host), "host_fmax": f_host, "seed": seed,
                         "steps": res.steps, "dE_meV": 1e3 * (res.energy - e_host),
                         "mean_dist": float(d.mean()), "max_dist": float(d.max())})
            logger.info("%s seed %d: %d steps", name, seed, res.steps)
    print(f"teacher {args.teacher}, rattle {args.rattle} Å, FIRE to {args.fmax} eV/Å")
    print(f"{'host':<6}{'sites':>6}{'host fmax':>10}{'steps':>7}{'E - E_host':>12}"
          f"{'mean dist':>10}{'max dist':>9}")
    for name in dict.fromkeys(r["host"] for r in rows):
        rs = [r for r in rows if r["host"] == name]
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("steps", "dE_meV", "mean_dist", "max_dist")}
        print(f"{name:<6}{rs[0]['sites']:>6}{rs[0]['host_fmax']:>10.4f}{med['steps']:>7.0f}"
              f"{med['dE_meV']:>8.1f} meV{med['mean_dist']:>10.4f}{med['max_dist']:>9.4f}")
    return rows


def relabel_pairs(path: str, n: int, rattle: float, seed: int, calc, fmax: float
                  ) -> list[dict]:
    """Relax the first ``n`` pairs of ``path`` again from their unrelaxed structure
    rattled by ``rattle`` Å; print and return the distance to the stored labels."""
    from ase_definet.data.store import iter_pairs

    rows = []
    for pair in itertools.islice(iter_pairs([path]), n):
        start = pair.unrelaxed.copy()  # Atoms.copy() drops the stored calculator
        start.rattle(rattle, seed=seed)
        res = relax_fixed_cell(start, calc, fmax=fmax, steps=2000)
        d = np.linalg.norm(res.positions - pair.relaxed_positions, axis=1)
        rows.append({"config_id": pair.info.get("config_id", "?"),
                     "stored_steps": pair.info.get("steps", -1), "steps": res.steps,
                     "dummy": float(np.linalg.norm(pair.relaxed_positions
                                                   - pair.unrelaxed.positions, axis=1).mean()),
                     "mean_dist": float(d.mean()), "max_dist": float(d.max()),
                     "dE_meV": 1e3 * (res.energy - pair.info.get("relaxed_energy", np.nan))})
        logger.info("%s: %d steps", rows[-1]["config_id"], res.steps)
    print(f"{path}: first {n} pairs relaxed again from a start rattled by {rattle} Å, "
          f"FIRE to {fmax} eV/Å; distances to the stored relaxed positions in Å")
    print(f"{'pair':<18}{'steps':>7}{'stored':>8}{'Dummy':>8}{'mean dist':>10}{'max dist':>9}"
          f"{'dE':>11}")
    for r in rows:
        print(f"{r['config_id']:<18}{r['steps']:>7}{r['stored_steps']:>8}{r['dummy']:>8.3f}"
              f"{r['mean_dist']:>10.4f}{r['max_dist']:>9.4f}{r['dE_meV']:>7.1f} meV")
    return rows


if __name__ == "__main__":
    main()
