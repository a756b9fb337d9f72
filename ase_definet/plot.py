"""Pictures of a predicted relaxation: the displacement field, top view.

    definet plot defective.cif --pristine host.cif -o field.png
    definet plot defective.cif --pristine host.cif --reference relaxed.cif -o error.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.geometry import find_mic

from .core.structure import DefectStructure
from .graph import SUBSTITUTION, VACANCY


def displacement_field(structure: DefectStructure, predicted: np.ndarray,
                       reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start positions (n_atoms, 3) and arrows (n_atoms, 3) Å of the atoms (host order):
    the predicted displacement, or with ``reference`` (relaxed positions, host order)
    the error ``predicted - reference`` (minimum image)."""
    start = structure.site_positions[structure.spec.site_index(structure.n_sites)]
    base = start if reference is None else reference
    arrows, _ = find_mic(predicted - base, structure.pristine.cell[:], structure.pristine.pbc)
    return start, arrows


def _draw(ax, structure: DefectStructure, start: np.ndarray, arrows: np.ndarray,
          scale: float, vmax: float | None = None, color: np.ndarray | None = None):
    """One top-view panel, arrows coloured by their length or by ``color`` (n_atoms,);
    returns the quiver (for a colour bar)."""
    mag = np.linalg.norm(arrows, axis=1) if color is None else np.asarray(color)
    cell = structure.pristine.cell[:]
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]) @ cell[:2, :2]
    ax.plot(corners[:, 0], corners[:, 1], "k-", lw=0.6)
    numbers = structure.pristine.numbers[structure.spec.site_index(structure.n_sites)]
    for z in np.unique(numbers):
        sel = numbers == z
        ax.scatter(start[sel, 0], start[sel, 1], s=12, alpha=0.35,
                   label=chemical_symbols[z], zorder=1)
    q = ax.quiver(start[:, 0], start[:, 1], arrows[:, 0], arrows[:, 1], mag, cmap="viridis",
                  angles="xy", scale_units="xy", scale=scale, width=0.003, zorder=3,
                  clim=(0, vmax) if vmax else None)
    m = structure.markers
    vac = structure.site_positions[m == VACANCY]
    sub = structure.site_positions[m == SUBSTITUTION]
    ax.scatter(vac[:, 0], vac[:, 1], s=90, facecolors="none", edgecolors="r", lw=1.5,
               label="vacancy", zorder=4)
    ax.scatter(sub[:, 0], sub[:, 1], s=110, marker="*", c="orange", edgecolors="k", lw=0.5,
               label="substitution", zorder=4)
    ax.set_aspect("equal")
    ax.set(xlabel="x [Å]", ylabel="y [Å]")
    return q


def _arrow_scale(arrows: np.ndarray) -> float:
    """Quiver scale (data units per Å) so the longest in-plane arrows span about 1.5 Å."""
    inplane = np.linalg.norm(arrows[:, :2], axis=1)
    ref = float(np.percentile(inplane, 99)) if inplane.size and inplane.max() > 0 else 1.0
    return ref / 1.5


def plot_field(structure: DefectStructure, predicted: np.ndarray, path: str | Path,
               reference: np.ndarray | None = None, title: str = "", scale: float | None = None,
               uncertainty: np.ndarray | None = None) -> Path:
    """Top view of the displacement (or error) field, arrows scaled and coloured by
    magnitude (or by ``uncertainty``, (n_atoms,) Å in host order), vacancies and
    substitutions marked; saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    start, arrows = displacement_field(structure, predicted, reference)
    scale = scale or _arrow_scale(arrows)
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    q = _draw(ax, structure, start, arrows, scale, color=uncertainty)
    label = ("predicted uncertainty" if uncertainty is not None
             else "|error|" if reference is not None else "|displacement|")
    fig.colorbar(q, ax=ax, shrink=0.75, label=label + " [Å]")
    ax.set_title(title or ("DefiNet error field" if reference is not None
                           else "DefiNet displacement field"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=5, fontsize=8)
    what = "uncertainty" if uncertainty is not None else "full |vector|"
    ax.text(0.99, 0.01, f"arrows: in-plane part, x{1 / scale:.0f}; colour: {what}",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=140)
    return path


def plot_comparison(structure: DefectStructure, predicted: np.ndarray, reference: np.ndarray,
                    path: str | Path, title: str = "") -> Path:
    """Three panels on one arrow scale and one colour scale: the reference (teacher)
    displacement, the predicted displacement and the error ``predicted - reference``.

    Args:
        structure: the defect structure (host, spec, unrelaxed positions).
        predicted: (n_atoms, 3) Å predicted relaxed positions, host order.
        reference: (n_atoms, 3) Å reference relaxed positions, host order.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    start, teacher = displacement_field(structure, reference)
    _, model = displacement_field(structure, predicted)
    _, error = displacement_field(structure, predicted, reference)
    scale = _arrow_scale(teacher)
    vmax = float(np.percentile(np.linalg.norm(teacher, axis=1), 99)) or None
    fig = Figure(figsize=(18, 5.2), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [("teacher (reference) displacement", teacher), ("DefiNet displacement", model),
              ("error: DefiNet - teacher", error)]
    for ax, (name, arrows) in zip(axes, panels, strict=True):
        q = _draw(ax, structure, start, arrows, scale, vmax)
        mae = np.linalg.norm(arrows, axis=1).mean()
        ax.set_title(f"{name}\nmean |vector| {mae:.3f} Å")
    fig.colorbar(q, ax=axes, shrink=0.9, pad=0.01, label="|vector| [Å]")
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=6, fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def reference_in_host_order(structure: DefectStructure, reference: Atoms) -> np.ndarray:
    """Relaxed reference positions in host order (matched to the sites like the input)."""
    ref = DefectStructure.from_pair(reference, structure.pristine)
    if ref.spec != structure.spec:
        raise ValueError("the reference structure has other defects than the input")
    return ref.site_positions[structure.spec.site_index(structure.n_sites)]
