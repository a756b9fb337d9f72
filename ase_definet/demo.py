"""The built-in example: relax a defective 8x8 MoS2 cell and show what moved."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from ase.geometry import get_distances

from .core.defects import DefectSpec
from .core.hosts import get_host

logger = logging.getLogger(__name__)

#: Two S vacancies, a Mo->W and an S->Se substitution on the 8x8 MoS2 host (192 sites).
DEMO_SPEC = DefectSpec(vacancies=(1, 100), substitutions={93: "W", 50: "Se"})


def demo_structure():
    """(pristine 8x8 MoS2 host, the demo DefectSpec)."""
    return get_host("MoS2").pristine(), DEMO_SPEC


def displacement_table(relaxer, top: int = 8) -> str:
    """Text table of the atoms that moved most, with their distance to the nearest defect."""
    s = relaxer.structure
    sites = s.spec.site_index(s.n_sites)
    disp = relaxer.atoms.positions - s.atom_positions(s.site_positions)
    disp_norm = np.linalg.norm(disp, axis=1)
    pristine = s.pristine
    # periodic distance of every atom's site to the nearest defect site, in one call
    _, dist = get_distances(pristine.positions[sites], pristine.positions[s.spec.defect_sites],
                            cell=pristine.cell, pbc=pristine.pbc)
    near = dist.min(axis=1)
    lines = [f"{'atom':>5} {'el':>3} {'site':>5} {'|dr| [A]':>9} {'to defect [A]':>14}"]
    for k in np.argsort(-disp_norm)[:top]:
        lines.append(f"{k:5d} {relaxer.atoms[k].symbol:>3} {sites[k]:5d} "
                     f"{disp_norm[k]:9.4f} {near[k]:14.2f}")
    for r in (3.0, 6.0):
        sel = near <= r
        lines.append(f"mean |dr| within {r:.0f} A of a defect: {disp_norm[sel].mean():.4f} A "
                     f"({sel.sum()} atoms); beyond: {disp_norm[~sel].mean():.4f} A")
    return "\n".join(lines)


def run_demo(model: str = "default", device: str | None = None,
             output: str | Path | None = None, plot: str | Path | None = None) -> None:
    from .core.fileio import write_structure
    from .core.predict import predict_sites
    from .relaxer import DefiNetRelaxer

    host, spec = demo_structure()
    t0 = time.perf_counter()
    relaxer = DefiNetRelaxer(host, defects=spec, model=model, device=device, logfile="-")
    relaxer.run()
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    predict_sites(relaxer.model, [relaxer.structure])
    warm = time.perf_counter() - t1
    print(f"\nDefiNet relaxed MoS2 8x8 ({len(relaxer.atoms)} atoms; "
          f"{relaxer.todict()['defects']}) on {relaxer.todict()['device']} in "
          f"{elapsed * 1e3:.0f} ms, model loading and first-call start-up included; "
          f"a second prediction took {warm * 1e3:.0f} ms. Atoms that moved most:")
    print(displacement_table(relaxer))
    if output:
        write_structure(output, relaxer.atoms)
        print(f"wrote {output}")
    if plot:
        from .plot import plot_field

        s = relaxer.structure
        plot_field(s, relaxer.layers[-1][s.spec.site_index(s.n_sites)], plot,
                   title=f"definet demo: predicted displacements ({model})")
        print(f"wrote {plot}")
