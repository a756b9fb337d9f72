"""A defect structure ready for DefiNet: every host site with its element, marker and
initial coordinates, and the map back to the user's atoms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from ..graph import Graph, build_graph
from ..graph.neighbors import check_cell
from .defects import DefectSpec, SpecLike
from .matching import DEFAULT_TOLERANCE, Match, check_same_cell, match_to_host
from .validate import check_atoms, check_min_distance


@dataclass
class DefectStructure:
    """Host sites plus defects, in host order.

    Attributes:
        pristine: the pristine host (a private copy).
        spec: the defects.
        site_positions: (n_sites, 3) Å initial coordinates of every site: the input
            positions of the atoms (unwrapped next to their site), the pristine
            position of every vacancy placeholder.
        atom_sites: (n_atoms,) pristine site of every atom of the *user's* defective
            structure, in the user's order (``spec.site_index`` when the user gave a
            host and a spec).
        offsets: (n_atoms, 3) Å, ``user_positions - site_positions[atom_sites]``: the
            lattice translation undone when an atom was unwrapped, plus ``translation``.
        translation: (3,) Å, the rigid translation of the user's defective structure
            against its host, removed from ``site_positions`` (so the graph and the
            prediction do not depend on the two origins) and restored by
            :meth:`atom_positions`; zero for a host plus a spec.
    """

    pristine: Atoms
    spec: DefectSpec
    site_positions: np.ndarray
    atom_sites: np.ndarray
    offsets: np.ndarray
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_host(cls, host: Atoms, defects: SpecLike,
                  elements: list[int] | None = None) -> DefectStructure:
        """Pristine host plus a spec: the defective atoms start at their pristine sites."""
        check_atoms(host, "host")
        check_cell(host.cell[:], host.pbc)
        spec = DefectSpec.from_any(defects)
        spec.validate(host, elements)
        check_min_distance(host.positions, host.cell[:], host.pbc, "host")
        idx = spec.site_index(len(host))
        return cls(pristine=_plain_copy(host), spec=spec, site_positions=host.positions.copy(),
                   atom_sites=idx, offsets=np.zeros((len(idx), 3)))

    @classmethod
    def from_pair(cls, defective: Atoms, pristine: Atoms,
                  elements: list[int] | None = None,
                  tolerance: float = DEFAULT_TOLERANCE) -> DefectStructure:
        """Defective structure (any order, wrapped or relaxed) plus its pristine host."""
        check_atoms(defective, "defective structure")
        check_atoms(pristine, "pristine host")
        return cls.from_match(defective, pristine, match_to_host(defective, pristine, tolerance),
                              elements)

    @classmethod
    def from_match(cls, defective: Atoms, pristine: Atoms, match: Match,
                   elements: list[int] | None = None) -> DefectStructure:
        """Defective structure plus its host, from their :class:`~ase_definet.core.matching.Match`
        (made once, e.g. by the host detection)."""
        match.spec.validate(pristine, elements)
        for at, what in ((pristine, "pristine host"), (defective, "defective structure")):
            check_min_distance(at.positions, pristine.cell[:], pristine.pbc, what)
        pos = pristine.positions.copy()
        pos[match.site_index] += match.offsets - match.translation
        return cls(pristine=_plain_copy(pristine), spec=match.spec, site_positions=pos,
                   atom_sites=match.site_index,
                   offsets=defective.positions - pos[match.site_index],
                   translation=match.translation)

    @classmethod
    def from_atoms(cls, atoms: Atoms, defects: SpecLike = None, pristine: Atoms | None = None,
                   elements: list[int] | None = None,
                   tolerance: float = DEFAULT_TOLERANCE) -> DefectStructure:
        """Dispatch: ``atoms`` is the host (with ``defects``) or the defective structure
        (with ``pristine``); both at once is an error."""
        if pristine is not None and defects is not None:
            raise ValueError("give either defects= (atoms is the pristine host) or "
                             "pristine= (atoms is the defective structure), not both")
        if pristine is not None:
            return cls.from_pair(atoms, pristine, elements, tolerance)
        return cls.from_host(atoms, defects, elements)

    @classmethod
    def from_sites(cls, pristine: Atoms, spec: SpecLike, atom_positions: np.ndarray
                   ) -> DefectStructure:
        """The defective atoms in host order (``spec.site_index``, as stored in a pair) at
        ``atom_positions`` (n_atoms, 3) Å, each next to its site; vacancy placeholders
        at their pristine sites. The record of the unrelaxed side of a training pair."""
        spec = DefectSpec.from_any(spec)
        idx = spec.site_index(len(pristine))
        pos = pristine.positions.copy()
        pos[idx] = atom_positions
        return cls(pristine=_plain_copy(pristine), spec=spec, site_positions=pos,
                   atom_sites=idx, offsets=np.zeros((len(idx), 3)))

    # ------------------------------------------------------------------ views
    @property
    def n_sites(self) -> int:
        return len(self.pristine)

    @property
    def site_numbers(self) -> np.ndarray:
        return self.spec.site_numbers(self.pristine)

    @property
    def markers(self) -> np.ndarray:
        return self.spec.markers(self.n_sites)

    def graph(self, cutoff: float, max_neighbors: int | None) -> Graph:
        """The marked neighbour graph (see :func:`ase_definet.graph.build_graph`)."""
        return build_graph(self.site_numbers, self.markers, self.site_positions,
                           self.pristine.cell[:], self.pristine.pbc, cutoff, max_neighbors)

    def atom_positions(self, site_positions: np.ndarray) -> np.ndarray:
        """Positions of the user's atoms, in the user's order and periodic images,
        given new coordinates of every site (n_sites, 3) -> (n_atoms, 3) Å."""
        return site_positions[self.atom_sites] + self.offsets

    def defective_atoms(self, site_positions: np.ndarray | None = None) -> Atoms:
        """The defective structure in host order (vacancies removed) at ``site_positions``
        (default: the initial coordinates)."""
        at = self.spec.apply(self.pristine)
        pos = self.site_positions if site_positions is None else site_positions
        at.positions = pos[self.spec.site_index(self.n_sites)]
        return at


def _plain_copy(atoms: Atoms) -> Atoms:
    """Numbers, positions, cell and pbc only (no calculator, constraints or arrays)."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                 pbc=atoms.pbc)


__all__ = ["DefectStructure", "check_same_cell"]
