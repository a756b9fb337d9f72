"""Fine-tune a checkpoint on new (unrelaxed, relaxed) pairs of a new material.

    python examples/finetune_on_new_pairs.py --from default --pairs 40 --epochs 30

Makes pairs for a Cu host with vacancies and Ag/Au substitutions, labelled by ASE's EMT
(a stand-in for your DFT), writes them as extxyz, fine-tunes (Cu, Ag, Au are added to
the element embedding), and evaluates against the Dummy baseline. The same three CLI
commands are in the README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ase.build import bulk
from ase.io import write

from ase_definet.cli import main as definet
from ase_definet.core.hosts import Host
from ase_definet.data.configs import high_density_configs
from ase_definet.data.label import relax_fixed_cell
from ase_definet.data.teacher import get_teacher


def make_pairs(n: int, out: Path) -> Path:
    host = Host("Cu", bulk("Cu", "fcc", a=3.6, cubic=True), (2, 2, 2),
                substitutions={"Cu": ("Ag", "Au")}, vacancies=("Cu",))
    pristine = host.pristine()
    calc = get_teacher("emt")
    frames = []
    for c in high_density_configs(host, -(-n // 2), seed=1, concentrations=(0.05, 0.1))[:n]:
        un = c.spec.apply(pristine)
        un.rattle(0.05, seed=len(frames))
        res = relax_fixed_cell(un, calc, fmax=0.01, steps=500)
        rel = un.copy()
        rel.positions = res.positions
        frames += [un, rel]
    out.mkdir(parents=True, exist_ok=True)
    write(out / "pairs.extxyz", frames)
    write(out / "host.cif", pristine)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--from", dest="base", default="default")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workdir", type=Path, default=Path("finetune_example"))
    args = p.parse_args(argv)

    d = make_pairs(args.pairs, args.workdir)
    data = ["--data", str(d / "pairs.extxyz"), "--pristine", str(d / "host.cif")]
    rc = definet(["finetune", "--from", args.base, *data, "--out", str(d / "run"),
                  "--epochs", str(args.epochs), "--batch-size", "4", "--lr", "5e-4"])
    rc = rc or definet(["evaluate", "--model", str(d / "run" / "best.safetensors"), *data,
                        "--split", "all", "--out-dir", str(d)])
    return rc


if __name__ == "__main__":
    main()
