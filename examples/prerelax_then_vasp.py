"""Pre-relax with DefiNet, then hand the structure to VASP for a short relaxation.

    python examples/prerelax_then_vasp.py --outdir vasp_run        # writes VASP inputs
    python examples/prerelax_then_vasp.py --teacher chgnet         # same flow end to end,
                                                                   # CHGNet standing in for VASP

The VASP set-up (IBRION=2, ISIF=2, EDIFFG=-0.01) is written without running VASP.
With ``--teacher``, the structure is relaxed by that calculator twice, from the
unrelaxed and from the DefiNet-predicted structure, and the ionic steps saved are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ase.io import write
from ase.optimize import FIRE

from ase_definet import DefectSpec, DefiNetRelaxer
from ase_definet.core.hosts import get_host

INCAR = dict(xc="PBE", encut=500, ibrion=2, isif=2, nsw=100, ediff=1e-6, ediffg=-0.01,
             ispin=2, lreal="Auto")


def vasp_inputs(atoms, outdir: Path) -> list[str]:
    """Write the inputs of a short fixed-cell VASP relaxation of ``atoms`` into ``outdir``.

    With POTCARs available (``$VASP_PP_PATH``), ASE's ``Vasp.write_input`` writes all of
    them; without, INCAR, KPOINTS and POSCAR are written (add the POTCAR yourself).
    """
    from ase.calculators.vasp import Vasp

    outdir.mkdir(parents=True, exist_ok=True)
    calc = Vasp(directory=str(outdir), kpts=(1, 1, 1), gamma=True, **INCAR)
    try:
        calc.write_input(atoms)
    except RuntimeError as err:  # no POTCAR library on this machine
        print(f"no POTCARs ({err}); writing INCAR, KPOINTS and POSCAR only")
        tags = {"GGA": "PE", **{k.upper(): v for k, v in INCAR.items() if k != "xc"}}
        (outdir / "INCAR").write_text("".join(f"{k} = {v}\n" for k, v in tags.items()))
        (outdir / "KPOINTS").write_text("Gamma only\n0\nGamma\n1 1 1\n0 0 0\n")
        write(outdir / "POSCAR", atoms, format="vasp", direct=True, sort=True)
    return sorted(p.name for p in outdir.iterdir())


def teacher_steps(atoms, calc, fmax: float = 0.01) -> int:
    a = atoms.copy()
    a.calc = calc
    opt = FIRE(a, logfile=None)
    opt.run(fmax=fmax, steps=2000)
    return opt.nsteps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--outdir", type=Path, default=Path("vasp_run"))
    p.add_argument("--teacher", help="e.g. chgnet: run the flow end to end with it")
    args = p.parse_args(argv)

    host = get_host("MoS2").pristine((args.size, args.size, 1))
    spec = DefectSpec(vacancies=(1, 4), substitutions={0: "W"})
    relaxer = DefiNetRelaxer(host, defects=spec, model=args.model, logfile=None)
    relaxer.run()
    files = vasp_inputs(relaxer.atoms, args.outdir)
    print(f"VASP inputs for the DefiNet-relaxed structure in {args.outdir}: {files}")
    result = {"files": files}
    if args.teacher:
        from ase_definet.data.teacher import get_teacher

        calc = get_teacher(args.teacher)
        n0 = teacher_steps(spec.apply(host), calc)
        n1 = teacher_steps(relaxer.atoms, calc)
        print(f"{args.teacher} FIRE steps to 0.01 eV/Å: {n0} from the unrelaxed structure, "
              f"{n1} from DefiNet's ({100 * (n0 - n1) / max(n0, 1):.0f}% saved)")
        result |= {"steps_unrelaxed": n0, "steps_definet": n1}
    return result


if __name__ == "__main__":
    main()
