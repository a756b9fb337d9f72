"""Host materials: unit cells, supercells and the defects allowed on them.

The six 2DMD materials are built in (paper, Table 1). Their unit cells ship as CIF files
in ``ase_definet/core/hosts/`` (2DMD names: ``MoS2.cif``, ``WSe2.cif``, ``BN.cif``,
``GaSe.cif``, ``InSe.cif``, ``P.cif``) whose in-plane lattice and positions were relaxed
by the teacher (``python -m ase_definet.data.relax_hosts`` regenerates them); c = 20 Å.
Users register their own hosts with :func:`register_host`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from ase import Atoms
from ase.build import graphene, mx2
from ase.io import read

VACUUM_C = 20.0  # Å, out-of-plane cell length of every built-in host


@dataclass(frozen=True)
class Host:
    """A host crystal and its allowed point defects.

    Attributes:
        name: material name (``"MoS2"``).
        unit_cell: the pristine unit cell (Å).
        supercell: repetition (nx, ny, nz) giving the defect supercell.
        substitutions: element -> allowed substituents, e.g. ``{"S": ("Se",)}``.
        vacancies: elements whose sites may be vacant.
        cif_name: file name of the unit cell in the 2DMD layout.
    """

    name: str
    unit_cell: Atoms
    supercell: tuple[int, int, int]
    substitutions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    vacancies: tuple[str, ...] = ()
    cif_name: str = ""

    def pristine(self, repeat: tuple[int, int, int] | None = None) -> Atoms:
        """The pristine supercell (a new Atoms), default repetition ``self.supercell``."""
        atoms = self.unit_cell.repeat(repeat or self.supercell)
        atoms.pbc = True
        atoms.info = {"material": self.name}
        return atoms

    def defect_types(self) -> list[tuple[str, str | None]]:
        """All allowed (host element, substituent or None for vacancy) pairs."""
        types: list[tuple[str, str | None]] = []
        for el, subs in self.substitutions.items():
            types += [(el, s) for s in subs]
        types += [(el, None) for el in self.vacancies]
        return types


_REGISTRY: dict[str, Host] = {}


def register_host(host: Host, overwrite: bool = False) -> None:
    """Make ``host`` available by name to the generators and the CLI."""
    if host.name in _REGISTRY and not overwrite:
        raise ValueError(f"host {host.name!r} is already registered (use overwrite=True)")
    _REGISTRY[host.name] = host


def get_host(name: str) -> Host:
    """Return a registered host by name; the error lists the valid names."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown host {name!r}; known hosts: {sorted(_REGISTRY)}") from None


def host_names() -> list[str]:
    _ensure_builtin()
    return list(_REGISTRY)


# ---------------------------------------------------------------- built-in materials
# Substitutions and vacancies as in 2DMD (paper, Table 1).
BUILTIN_DEFECTS: dict[str, dict] = {
    "MoS2": dict(cif="MoS2.cif", supercell=(8, 8, 1), subs={"S": ("Se",), "Mo": ("W",)},
                 vac=("Mo", "S")),
    "WSe2": dict(cif="WSe2.cif", supercell=(8, 8, 1), subs={"Se": ("S",), "W": ("Mo",)},
                 vac=("W", "Se")),
    "hBN": dict(cif="BN.cif", supercell=(8, 8, 1), subs={"B": ("C",), "N": ("C",)},
                vac=("B", "N")),
    "GaSe": dict(cif="GaSe.cif", supercell=(6, 6, 1), subs={"Ga": ("In",), "Se": ("S",)},
                 vac=("Ga", "Se")),
    "InSe": dict(cif="InSe.cif", supercell=(6, 6, 1), subs={"In": ("Ga",), "Se": ("S",)},
                 vac=("In", "Se")),
    "BP": dict(cif="P.cif", supercell=(6, 6, 1), subs={"P": ("N",)}, vac=("P",)),
}


def guess_unit_cell(name: str) -> Atoms:
    """Unrelaxed starting geometry of a built-in material (literature lattice constants).

    These are the inputs of the teacher's unit-cell relaxation, not the shipped cells.
    """
    half = VACUUM_C / 2
    if name in ("MoS2", "WSe2"):
        a, th = {"MoS2": (3.19, 3.13), "WSe2": (3.32, 3.35)}[name]
        at = mx2(formula=name, kind="2H", a=a, thickness=th, vacuum=0.0)
        at.cell[2, 2] = VACUUM_C
    elif name == "hBN":
        at = graphene(formula="BN", a=2.51, vacuum=0.0)
        at.cell[2, 2] = VACUUM_C
    elif name in ("GaSe", "InSe"):
        # D3h monolayer X-M-M-X: metals at (1/3, 2/3), chalcogens at (2/3, 1/3).
        a, zm, zx, el = {"GaSe": (3.82, 1.23, 2.41, "Ga"), "InSe": (4.09, 1.41, 2.68, "In")}[name]
        cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, VACUUM_C]]
        frac = [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0], [2 / 3, 1 / 3, 0]]
        at = Atoms(f"{el}2Se2", cell=cell, pbc=True)
        at.set_scaled_positions(frac)
        at.positions[:, 2] = [zm, -zm, zx, -zx]
    elif name == "BP":
        # Phosphorene from bulk Cmca (8f: y=0.10168, z=0.08056); x zigzag, y armchair.
        a, c, h, u = 3.3136, 4.3763, 1.0654, 0.08056
        at = Atoms("P4", cell=[a, c, VACUUM_C], pbc=True,
                   positions=[[0, u * c, h], [0, -u * c, -h],
                              [a / 2, (0.5 + u) * c, -h], [a / 2, (0.5 - u) * c, h]])
    else:
        raise ValueError(f"no built-in geometry for {name!r}; known: {sorted(BUILTIN_DEFECTS)}")
    at.pbc = True
    at.positions[:, 2] += half - at.positions[:, 2].mean()
    at.wrap()
    return at


def builtin_unit_cell(name: str) -> Atoms:
    """The shipped, teacher-relaxed unit cell of a built-in material (falls back to the
    literature guess when the CIF has not been generated yet)."""
    cif = BUILTIN_DEFECTS[name]["cif"]
    ref = resources.files("ase_definet.core").joinpath("hosts", cif)
    if ref.is_file():
        with resources.as_file(ref) as path:
            at = read(path)
        at.pbc = True
        return at
    return guess_unit_cell(name)


def _ensure_builtin() -> None:
    for name, d in BUILTIN_DEFECTS.items():
        if name not in _REGISTRY:
            _REGISTRY[name] = Host(name=name, unit_cell=builtin_unit_cell(name),
                                   supercell=d["supercell"], substitutions=d["subs"],
                                   vacancies=d["vac"], cif_name=d["cif"])
