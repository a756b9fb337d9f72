"""Point-defect specifications on a pristine host.

A :class:`DefectSpec` names vacancies and substitutions by *pristine site index*.
Convention used everywhere in ``ase_definet``: a defective structure keeps the host's
atom order with the vacant sites removed, so host site ``i`` maps to one predictable
atom of the defective structure (see :meth:`DefectSpec.site_index`).

Markers (paper, Methods): 0 pristine, 1 substitution, 2 vacancy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..graph import SUBSTITUTION, VACANCY

SpecLike = Union["DefectSpec", Mapping[str, Any], None]


def to_atomic_number(element: int | str) -> int:
    """Return the atomic number of ``element`` (symbol or number); ``ValueError`` if unknown."""
    if isinstance(element, (int, np.integer)) and not isinstance(element, bool):
        if 1 <= int(element) < len(chemical_symbols):
            return int(element)
        raise ValueError(f"unknown atomic number {element!r}")
    if isinstance(element, str) and element in atomic_numbers and element != "X":
        return atomic_numbers[element]
    raise ValueError(f"unknown chemical symbol {element!r}")


@dataclass(frozen=True)
class DefectSpec:
    """Vacancies and substitutions on the sites of a pristine host.

    Attributes:
        vacancies: sorted pristine site indices that are vacant.
        substitutions: pristine site index -> atomic number of the substituent.
    """

    vacancies: tuple[int, ...] = ()
    substitutions: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vac = [int(_as_index(i, "vacancy")) for i in self.vacancies]
        if len(set(vac)) != len(vac):
            dup = sorted({i for i in vac if vac.count(i) > 1})
            raise ValueError(f"vacancy site(s) listed more than once: {dup}")
        subs = {int(_as_index(i, "substitution")): to_atomic_number(z)
                for i, z in dict(self.substitutions).items()}
        both = sorted(set(vac) & set(subs))
        if both:
            raise ValueError(f"site(s) {both} are both vacant and substituted")
        object.__setattr__(self, "vacancies", tuple(sorted(vac)))
        object.__setattr__(self, "substitutions", dict(sorted(subs.items())))

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_any(cls, spec: SpecLike) -> DefectSpec:
        """Accept a ``DefectSpec``, ``None`` (no defects) or a dict
        ``{"vacancies": [i, ...], "substitutions": {j: "W", ...}}``."""
        if spec is None:
            return cls()
        if isinstance(spec, DefectSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"defects must be a DefectSpec or a dict with keys 'vacancies' and "
                f"'substitutions', got {type(spec).__name__}")
        unknown = set(spec) - {"vacancies", "substitutions"}
        if unknown:
            raise ValueError(f"unknown key(s) in defect spec: {sorted(unknown)}; "
                             "expected 'vacancies' and/or 'substitutions'")
        vac = spec.get("vacancies")
        subs = spec.get("substitutions")
        vac = () if vac is None else vac
        subs = {} if subs is None else subs
        if isinstance(vac, np.ndarray):  # a numpy array of site indices (or one index)
            if vac.ndim > 1:
                raise ValueError(f"'vacancies' must be a list of site indices, got an "
                                 f"array of shape {vac.shape}")
            vac = vac.reshape(-1).tolist()
        if isinstance(vac, (int, np.integer)):
            vac = (vac,)
        if not isinstance(subs, Mapping):
            raise ValueError("'substitutions' must map site index -> element, "
                             f"got {type(subs).__name__}")
        return cls(vacancies=tuple(vac), substitutions=dict(subs))

    # ------------------------------------------------------------------ queries
    @property
    def n_defects(self) -> int:
        return len(self.vacancies) + len(self.substitutions)

    @property
    def defect_sites(self) -> np.ndarray:
        """Sorted pristine indices of all defect sites, shape (n_defects,)."""
        return np.array(sorted([*self.vacancies, *self.substitutions]), dtype=int)

    def validate(self, host: Atoms, elements: Iterable[int] | None = None) -> None:
        """Raise ``ValueError`` if the spec does not fit ``host`` (or the element list)."""
        n = len(host)
        bad = [i for i in (*self.vacancies, *self.substitutions) if not 0 <= i < n]
        if bad:
            raise ValueError(f"site index(es) {bad} out of range for a host of {n} sites")
        if n - len(self.vacancies) == 0:
            raise ValueError("every site of the host is vacant")
        same = [i for i, z in self.substitutions.items() if host.numbers[i] == z]
        if same:
            raise ValueError(f"site {same[0]} is {chemical_symbols[host.numbers[same[0]]]} "
                             f"already: substituting an element by itself is no defect "
                             f"(site(s) {same}); leave them out of the substitutions")
        if elements is not None:
            known = set(int(z) for z in elements)
            numbers = self.defective_numbers(host)
            unknown = sorted(set(numbers.tolist()) - known)
            if unknown:
                names = [chemical_symbols[z] for z in unknown]
                raise ValueError(
                    f"element(s) {names} are not among those the loaded weights were "
                    f"trained on ({[chemical_symbols[z] for z in sorted(known)]})")

    def markers(self, n_sites: int) -> np.ndarray:
        """Per-site markers, shape (n_sites,), int64: 0 pristine, 1 substitution, 2 vacancy."""
        m = np.zeros(n_sites, dtype=np.int64)
        m[list(self.substitutions)] = SUBSTITUTION
        m[list(self.vacancies)] = VACANCY
        return m

    def site_numbers(self, host: Atoms) -> np.ndarray:
        """Atomic number of every *site* (vacancies keep the host's), shape (n_sites,)."""
        z = host.get_atomic_numbers().copy()
        for i, zi in self.substitutions.items():
            z[i] = zi
        return z

    def defective_numbers(self, host: Atoms) -> np.ndarray:
        """Atomic numbers of the atoms present, shape (n_sites - n_vacancies,)."""
        return self.site_numbers(host)[self.site_index(len(host))]

    def site_index(self, n_sites: int) -> np.ndarray:
        """Pristine index of each atom of the defective structure, shape (n_atoms,)."""
        keep = np.ones(n_sites, dtype=bool)
        keep[list(self.vacancies)] = False
        return np.flatnonzero(keep)

    def apply(self, host: Atoms) -> Atoms:
        """Return the (unrelaxed) defective structure built from ``host``.

        Keeps the host's cell, pbc, info and per-atom arrays; vacant sites are removed,
        substituted sites change element. ``host`` itself is not modified.
        """
        self.validate(host)
        out = host.copy()
        out.calc = None
        out.set_atomic_numbers(self.site_numbers(host))
        idx = self.site_index(len(host))
        out = out[idx]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict with chemical symbols for substituents."""
        return {"vacancies": list(self.vacancies),
                "substitutions": {int(i): chemical_symbols[z]
                                  for i, z in self.substitutions.items()}}

    def __repr__(self) -> str:
        subs = {i: chemical_symbols[z] for i, z in self.substitutions.items()}
        return f"DefectSpec(vacancies={list(self.vacancies)}, substitutions={subs})"


def _as_index(i: Any, what: str) -> int:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise ValueError(f"{what} site index must be an integer, got {i!r}")
    return int(i)
