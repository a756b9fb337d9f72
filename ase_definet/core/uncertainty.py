"""Per-atom uncertainty from the disagreement of the refinement stages, calibrated.

Each refinement stage of a checkpoint re-relaxes the previous stage's prediction. Where
the network is sure, later stages barely move an atom; where it is not, they still move
it. The *spread* of a site is the length of all its corrections after the first stage,

    spread_i = sum_{s=2..S} |x_i^(s) - x_i^(s-1)|            (Å),

with x^(s) the coordinates after stage s (one stage only: the last layer's shift). It
costs nothing beyond the forward pass, and neither does the *shift* of a site, the
length of its predicted displacement |x_i^(S) - x_i^(0)| (Å): an atom the network moves
far is one whose final place it knows less well. A calibration fitted on held-out pairs
(:func:`fit_calibration`, ``definet calibrate``) maps each atom's *score*

    score_i = a log(spread_i) + b log(mean_j spread_j) + c log(n_atoms)
              + d log(shift_i) + e log(mean_j shift_j)

(the structure's mean spread, mean shift and its atom count, clipped to the calibrated
range, carry the error the stages agree on: it grows with the cell, since the far field
of a larger cell relaxes further) to the expected size of the error of the predicted
position, and to a bound the error stays below for 90 % of atoms, both monotone
piecewise-linear in the score. The weights are a least-squares fit of log(error) on the
val split. It is stored in the checkpoint's metadata per number of stages run. Older
calibrations have three weights (no shift terms; then the shift is not needed), the
oldest none (a = 1, b = c = 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np

METADATA_KEY = "uncertainty"
_FLOOR = 1e-6  # Å, spreads below are treated as this (log scale)
_SHIFT_FLOOR = 1e-4  # Å, shifts below are treated as this (below the teacher's label noise)


def stage_spread(layers: np.ndarray, stage_ends: Sequence[int]) -> np.ndarray:
    """The spread (n_sites,) Å of coordinates after every layer.

    Args:
        layers: (L+1, n_sites, 3) Å, layer 0 the input, as returned by
            :func:`ase_definet.core.predict.predict_sites` with ``all_layers``.
        stage_ends: the index in ``layers`` of each stage's prediction
            (:meth:`~ase_definet.model.DefiNet.stage_ends`); the last must be L.

    One stage: the last layer's step. More: the summed distances between successive
    stages' predictions.
    """
    layers = np.asarray(layers, dtype=float)
    ends = [int(e) for e in stage_ends]
    if not ends or ends[-1] != len(layers) - 1 or any(b <= a for a, b in pairwise(ends)):
        raise ValueError(f"{len(layers)} layer outputs do not end at stages {ends}")
    if len(ends) == 1:
        return np.linalg.norm(layers[-1] - layers[-2], axis=-1)
    stage_out = layers[ends]  # (S, n, 3)
    return np.linalg.norm(np.diff(stage_out, axis=0), axis=-1).sum(axis=0)


def predicted_shift(layers: np.ndarray) -> np.ndarray:
    """The shift (n_sites,) Å of every site, the length of its predicted displacement,
    from the coordinates after every layer (L+1, n_sites, 3) Å: layer 0 the input, the
    last the prediction."""
    layers = np.asarray(layers, dtype=float)
    return np.linalg.norm(layers[-1] - layers[0], axis=-1)


@dataclass(frozen=True)
class Calibration:
    """Score -> error, fitted on held-out pairs for one number of stages.

    The methods take the spreads and shifts of *one structure's* atoms, (n_atoms,) Å
    each, since the score depends on the structure's means and size; the shifts may be
    left out for a calibration without shift terms.

    Attributes:
        knots: increasing exp(score) (Å when ``weights`` is (1, 0, 0)), the medians of
            equal-count bins.
        mean: the mean error (Å) of the atoms of each bin.
        q90: the 90th percentile of their error (Å).
        structure_threshold: a structure whose mean uncertainty (Å) exceeds this is
            flagged as unreliable (1.5x the largest seen in calibration).
        n_atoms: atoms the fit used.
        weights: (a, b, c, d, e) of the score (module docstring); (a, b, c) in a
            calibration without shift terms.
        size_range: (smallest, largest) atom count of a calibration structure; the
            count in the score is clipped to it.
    """

    knots: tuple[float, ...]
    mean: tuple[float, ...]
    q90: tuple[float, ...]
    structure_threshold: float
    n_atoms: int = 0
    weights: tuple[float, ...] = (1.0, 0.0, 0.0)
    size_range: tuple[int, int] = (1, 1)

    @property
    def needs_shift(self) -> bool:
        """Whether the score reads the atoms' shifts (a calibration with shift terms)."""
        return len(self.weights) == 5

    def formula(self) -> str:
        """The score as text, e.g. ``0.18 log spread + 0.51 log mean spread + ...``."""
        names = ["log spread", "log mean spread", "log atoms", "log shift",
                 "log mean shift"]
        terms = [f"{'-' if w < 0 else '+'} {abs(w):.3f} {n}"
                 for w, n in zip(self.weights, names)]
        return " ".join(terms).removeprefix("+ ")

    def score(self, spread: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Log-scale score (n_atoms,) of one structure's spreads and shifts (n_atoms,)
        Å each."""
        if self.needs_shift and shift is None:
            raise ValueError("this calibration reads the predicted shift of every atom: "
                             "pass shift=|prediction - input| (Å)")
        return _score(np.asarray(spread, dtype=float),
                      None if not self.needs_shift else np.asarray(shift, dtype=float),
                      self.weights, self.size_range)

    def _interp(self, spread: np.ndarray, shift: np.ndarray | None,
                values: tuple[float, ...]) -> np.ndarray:
        x = self.score(spread, shift)
        k = np.log(np.maximum(np.asarray(self.knots), _FLOOR))
        v = np.asarray(values)
        out = np.interp(x, k, v)
        above = x > k[-1]  # beyond the largest score seen: grow with it
        out[above] = v[-1] * np.exp(x[above] - k[-1])
        return out

    def expected_error(self, spread: np.ndarray, shift: np.ndarray | None = None
                       ) -> np.ndarray:
        """Expected error (Å) of each atom's predicted position, (n_atoms,), from one
        structure's spreads and shifts (n_atoms,) Å."""
        return self._interp(spread, shift, self.mean)

    def bound90(self, spread: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Error bound (Å) that 90 % of atoms stay below, (n_atoms,), from one
        structure's spreads and shifts (n_atoms,) Å."""
        return self._interp(spread, shift, self.q90)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        try:
            cal = cls(knots=tuple(map(float, d["knots"])), mean=tuple(map(float, d["mean"])),
                      q90=tuple(map(float, d["q90"])),
                      structure_threshold=float(d["structure_threshold"]),
                      n_atoms=int(d.get("n_atoms", 0)),
                      weights=tuple(map(float, d.get("weights", (1.0, 0.0, 0.0)))),
                      size_range=tuple(map(int, d.get("size_range", (1, 1)))))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad uncertainty calibration in the checkpoint: {err}") from None
        arrays = [np.asarray(a) for a in (cal.knots, cal.mean, cal.q90)]
        if (len({len(a) for a in arrays}) != 1 or len(cal.knots) < 2
                or not all(np.isfinite(a).all() and (a >= 0).all() for a in arrays)
                or (np.diff(arrays[0]) <= 0).any()):
            raise ValueError("bad uncertainty calibration in the checkpoint: knots must "
                             "increase and all values be finite and non-negative")
        if (len(cal.weights) not in (3, 5) or not np.isfinite(cal.weights).all()
                or cal.weights[0] <= 0 or len(cal.size_range) != 2
                or not 1 <= cal.size_range[0] <= cal.size_range[1]):
            raise ValueError("bad uncertainty calibration in the checkpoint: the score "
                             "needs three or five finite weights, the first positive, and "
                             "a size range 1 <= smallest <= largest")
        return cal


def _log_and_mean(x: np.ndarray, floor: float) -> list[np.ndarray]:
    """log x and the log of its mean, each (n_atoms,), x floored at ``floor``."""
    x = np.maximum(x, floor)
    return [np.log(x), np.full(len(x), np.log(x.mean()) if len(x) else 0.0)]


def _features(spread: np.ndarray, shift: np.ndarray | None, size_range: Sequence[int]
              ) -> np.ndarray:
    """(n_atoms, 3 or 5): log spread, log mean spread, log atom count (clipped to
    ``size_range``) and, when ``shift`` is given, log shift and log mean shift, of one
    structure's spreads and shifts (n_atoms,) Å."""
    n = min(max(len(spread), size_range[0]), size_range[1])
    cols = _log_and_mean(spread, _FLOOR) + [np.full(len(spread), np.log(n))]
    if shift is not None:
        if np.shape(shift) != np.shape(spread):
            raise ValueError(f"shift {np.shape(shift)} and spread {np.shape(spread)} must "
                             "have one value per atom each")
        cols += _log_and_mean(shift, _SHIFT_FLOOR)
    return np.column_stack(cols)


def _score(spread: np.ndarray, shift: np.ndarray | None, weights: Sequence[float],
           size_range: Sequence[int]) -> np.ndarray:
    return _features(spread, shift, size_range) @ np.asarray(weights, dtype=float)


def fit_calibration(spreads: Sequence[np.ndarray], errors: Sequence[np.ndarray],
                    n_bins: int = 20, structure_terms: bool = True,
                    shifts: Sequence[np.ndarray] | None = None) -> Calibration:
    """Fit a :class:`Calibration` on held-out structures: per structure, the atoms'
    spreads, actual errors and (optionally) predicted shifts, (n_atoms,) Å each.

    The score's weights are a least-squares fit of log(error) on log(spread), the log of
    the structure's mean spread and of its atom count and, with ``shifts``, the log of
    each atom's shift and of the structure's mean shift (with ``structure_terms`` False,
    the score is log(spread) alone). Atoms are cut into ``n_bins`` equal-count bins of
    score; each bin gives a knot (its median), its mean error and its 90th-percentile
    error, made monotone in the score. The structure-level threshold is 1.5x the largest
    mean expected error of a calibration structure.
    """
    spreads = [np.asarray(x, float).ravel() for x in spreads]
    errors = [np.asarray(x, float).ravel() for x in errors]
    given = shifts is not None
    shifts = [np.asarray(x, float).ravel() for x in shifts] if given else [None] * len(spreads)
    if (len(spreads) != len(errors) or len(shifts) != len(spreads)
            or any(len(a) != len(b) for a, b in zip(spreads, errors))
            or (given and any(len(a) != len(b) for a, b in zip(spreads, shifts)))):
        raise ValueError("spreads, errors (and shifts) must have one array per structure, "
                         "of equal lengths")
    keep = [k for k, x in enumerate(spreads) if len(x)]
    spreads, errors, shifts = ([v[k] for k in keep] for v in (spreads, errors, shifts))
    spread, error = np.concatenate(spreads or [[]]), np.concatenate(errors or [[]])
    if len(spread) < 2 * n_bins:
        raise ValueError(f"need at least {2 * n_bins} atoms with spreads and errors, "
                         f"got {len(spread)}")
    sizes = [len(x) for x in spreads]
    size_range = (min(sizes), max(sizes))
    weights: tuple[float, ...] = (1.0, 0.0, 0.0)
    if structure_terms and len(set(sizes)) > 1 and len(spreads) >= 3:
        target = np.log(np.maximum(error, 1e-5))
        for use in ((shifts, [None] * len(spreads)) if given else ([None] * len(spreads),)):
            design = np.concatenate([_features(x, h, size_range)
                                     for x, h in zip(spreads, use)])
            design = np.column_stack([design, np.ones(len(design))])  # and an intercept
            w = np.linalg.lstsq(design, target, rcond=None)[0]
            if w[0] > 0:
                weights = tuple(float(v) for v in w[:-1])
                break
    if len(weights) == 3:
        shifts = [None] * len(spreads)
    score = np.concatenate([_score(x, h, weights, size_range)
                            for x, h in zip(spreads, shifts)])
    order = np.argsort(score, kind="stable")
    bins = np.array_split(order, n_bins)
    knots = np.exp([np.median(score[b]) for b in bins])
    mean = np.maximum.accumulate([error[b].mean() for b in bins])
    q90 = np.maximum.accumulate([np.quantile(error[b], 0.9) for b in bins])
    keep_knots = np.concatenate([[True], np.diff(knots) > 0])  # strictly increasing
    cal = Calibration(tuple(knots[keep_knots]), tuple(mean[keep_knots]),
                      tuple(q90[keep_knots]), float("inf"), len(spread), weights, size_range)
    worst = max(float(cal.expected_error(x, h).mean()) for x, h in zip(spreads, shifts))
    return replace(cal, structure_threshold=1.5 * worst)


def calibrations_from_metadata(meta: Mapping[str, Any]) -> dict[int, Calibration]:
    """Number of stages run -> calibration, from a checkpoint's metadata (may be empty)."""
    raw = meta.get(METADATA_KEY) or {}
    if not isinstance(raw, Mapping):
        raise ValueError("bad uncertainty calibration in the checkpoint: not a mapping")
    return {int(k): Calibration.from_dict(v) for k, v in raw.items()}
