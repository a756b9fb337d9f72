"""How far to trust one prediction: per-atom uncertainty and out-of-range reasons.

Used alike by :class:`~ase_definet.DefiNetRelaxer` and :func:`~ase_definet.relax_many`.
The calibration and the training domain come from the checkpoint's metadata
(``definet calibrate``); weights without them give the raw stage spread as uncertainty
(``calibrated`` False) and no domain check.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from ..model import DefiNet
from .domain import METADATA_KEY as DOMAIN_KEY
from .domain import Domain, defect_kinds
from .structure import DefectStructure
from .uncertainty import calibrations_from_metadata, predicted_shift, stage_spread

logger = logging.getLogger(__name__)


class OutOfRangeWarning(UserWarning):
    """The structure lies outside what the weights were trained on, or the prediction's
    uncertainty is above the calibrated threshold."""


@dataclass
class Assessment:
    """Trust in one prediction.

    Attributes:
        uncertainty: (n_atoms,) Å, expected error of each atom's predicted position, in
            the order of the user's atoms.
        bound90: (n_atoms,) Å, the error stays below this for 90 % of atoms.
        calibrated: False when the weights carry no calibration (then both arrays are
            the raw stage spread).
        reasons: why the structure is out of range (empty when it is not).
    """

    uncertainty: np.ndarray
    bound90: np.ndarray
    calibrated: bool
    reasons: list[str] = field(default_factory=list)


def _metadata(model: DefiNet) -> dict[str, Any]:
    return getattr(model, "metadata", None) or {}


def domain_reasons(model: DefiNet, structure: DefectStructure) -> list[str]:
    """Reasons the structure lies outside the weights' training domain (none when the
    weights record no domain)."""
    raw = _metadata(model).get(DOMAIN_KEY)
    if not raw:
        return []
    p = structure.pristine
    host = Atoms(numbers=p.numbers, positions=p.positions, cell=p.cell, pbc=p.pbc)
    kinds = defect_kinds(p.numbers, structure.spec.vacancies, structure.spec.substitutions)
    return Domain.from_dict(raw).reasons(host, kinds)


def assess(model: DefiNet, structure: DefectStructure, layers: np.ndarray,
           stages_run: int, sites: np.ndarray | None = None) -> Assessment:
    """Uncertainty of a prediction from its layer outputs (L+1, n_sites, 3) Å, for the
    atoms on ``sites`` (default ``structure.atom_sites``: the user's atoms, in their
    order), and the structure-level reason when its mean exceeds the calibrated
    threshold."""
    sites = structure.atom_sites if sites is None else sites
    spread = stage_spread(layers, model.stage_ends(stages_run))[sites]
    cal = calibrations_from_metadata(_metadata(model)).get(stages_run)
    if cal is None:
        if not getattr(model, "_definet_uncalibrated_said", False):  # once per model
            logger.warning("these weights carry no uncertainty calibration for %d "
                           "stage(s): the uncertainty is the raw stage spread (run "
                           "definet calibrate)", stages_run)
            object.__setattr__(model, "_definet_uncalibrated_said", True)
        return Assessment(spread, spread, False)
    shift = predicted_shift(layers)[sites]
    u = cal.expected_error(spread, shift)
    reasons = []
    if len(u) and u.mean() > cal.structure_threshold:
        reasons.append(f"mean predicted uncertainty {u.mean():.3f} Å above the calibrated "
                       f"threshold {cal.structure_threshold:.3f} Å")
    return Assessment(u, cal.bound90(spread, shift), True, reasons)


def warn(reasons: list[str], stacklevel: int = 3) -> None:
    """One :class:`OutOfRangeWarning` per reason."""
    for r in reasons:
        warnings.warn(f"DefiNet: out of range: {r}", OutOfRangeWarning, stacklevel=stacklevel)
