"""Per-atom uncertainty from the disagreement of the refinement stages, calibrated.

Each refinement stage of a checkpoint re-relaxes the previous stage's prediction. Where
the network is sure, later stages barely move an atom; where it is not, they still move
it. The *spread* of a site is the length of all its corrections after the first stage,

    spread_i = sum_{s=2..S} |x_i^(s) - x_i^(s-1)|            (Å),

with x^(s) the coordinates after stage s (one stage only: the last layer's shift). It
costs nothing beyond the forward pass. A calibration fitted on held-out pairs
(:func:`fit_calibration`, ``definet calibrate``) maps the spread to the expected size of
the error of the predicted position, and to a bound the error stays below for 90 % of
atoms, both monotone piecewise-linear in log(spread). It is stored in the checkpoint's
metadata per number of stages run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

METADATA_KEY = "uncertainty"
_FLOOR = 1e-6  # Å, spreads below are treated as this (log scale)


def stage_spread(layers: np.ndarray, layers_per_stage: int) -> np.ndarray:
    """The spread (n_sites,) Å of coordinates after every layer.

    Args:
        layers: (S*T+1, n_sites, 3) Å, layer 0 the input, as returned by
            :func:`ase_definet.core.predict.predict_sites` with ``all_layers``.
        layers_per_stage: T.
    """
    layers = np.asarray(layers, dtype=float)
    n_stages = (len(layers) - 1) // layers_per_stage
    if n_stages < 1 or (len(layers) - 1) % layers_per_stage:
        raise ValueError(f"{len(layers)} layer outputs do not make whole stages of "
                         f"{layers_per_stage} layers")
    if n_stages == 1:
        return np.linalg.norm(layers[-1] - layers[-2], axis=-1)
    stage_out = layers[layers_per_stage::layers_per_stage]  # (S, n, 3)
    return np.linalg.norm(np.diff(stage_out, axis=0), axis=-1).sum(axis=0)


@dataclass(frozen=True)
class Calibration:
    """Spread -> error, fitted on held-out pairs for one number of stages.

    Attributes:
        knots: increasing spreads (Å), the medians of equal-count bins.
        mean: the mean error (Å) of the atoms of each bin.
        q90: the 90th percentile of their error (Å).
        structure_threshold: a structure whose mean uncertainty (Å) exceeds this is
            flagged as unreliable (1.5x the largest seen in calibration).
        n_atoms: atoms the fit used.
    """

    knots: tuple[float, ...]
    mean: tuple[float, ...]
    q90: tuple[float, ...]
    structure_threshold: float
    n_atoms: int = 0

    def _interp(self, spread: np.ndarray, values: tuple[float, ...]) -> np.ndarray:
        x = np.log(np.maximum(np.asarray(spread, dtype=float), _FLOOR))
        k = np.log(np.maximum(np.asarray(self.knots), _FLOOR))
        v = np.asarray(values)
        out = np.interp(x, k, v)
        above = x > k[-1]  # beyond the largest spread seen: grow with the spread
        out[above] = v[-1] * np.exp(x[above] - k[-1])
        return out

    def expected_error(self, spread: np.ndarray) -> np.ndarray:
        """Expected error (Å) of each site's predicted position, same shape as spread."""
        return self._interp(spread, self.mean)

    def bound90(self, spread: np.ndarray) -> np.ndarray:
        """Error bound (Å) that 90 % of atoms stay below, same shape as spread."""
        return self._interp(spread, self.q90)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        try:
            cal = cls(knots=tuple(map(float, d["knots"])), mean=tuple(map(float, d["mean"])),
                      q90=tuple(map(float, d["q90"])),
                      structure_threshold=float(d["structure_threshold"]),
                      n_atoms=int(d.get("n_atoms", 0)))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad uncertainty calibration in the checkpoint: {err}") from None
        arrays = [np.asarray(a) for a in (cal.knots, cal.mean, cal.q90)]
        if (len({len(a) for a in arrays}) != 1 or len(cal.knots) < 2
                or not all(np.isfinite(a).all() and (a >= 0).all() for a in arrays)
                or (np.diff(arrays[0]) <= 0).any()):
            raise ValueError("bad uncertainty calibration in the checkpoint: knots must "
                             "increase and all values be finite and non-negative")
        return cal


def fit_calibration(spread: np.ndarray, error: np.ndarray,
                    structure_spreads: Sequence[np.ndarray] | None = None,
                    n_bins: int = 20) -> Calibration:
    """Fit a :class:`Calibration` on per-atom spreads and actual errors (Å).

    Atoms are cut into ``n_bins`` equal-count bins of spread; each bin gives a knot (its
    median spread), its mean error and its 90th-percentile error, made monotone in the
    spread. ``structure_spreads`` (per-structure arrays of atom spreads) set the
    structure-level threshold.
    """
    spread, error = np.asarray(spread, float).ravel(), np.asarray(error, float).ravel()
    if len(spread) != len(error) or len(spread) < 2 * n_bins:
        raise ValueError(f"need at least {2 * n_bins} atoms with spreads and errors, "
                         f"got {len(spread)} and {len(error)}")
    order = np.argsort(spread, kind="stable")
    bins = np.array_split(order, n_bins)
    knots = np.array([np.median(spread[b]) for b in bins])
    mean = np.maximum.accumulate([error[b].mean() for b in bins])
    q90 = np.maximum.accumulate([np.quantile(error[b], 0.9) for b in bins])
    keep = np.concatenate([[True], np.diff(knots) > 0])  # knots strictly increasing
    knots, mean, q90 = knots[keep], mean[keep], q90[keep]
    cal = Calibration(tuple(knots), tuple(mean), tuple(q90), float("inf"), len(spread))
    if structure_spreads:
        worst = max(float(cal.expected_error(s).mean()) for s in structure_spreads)
        cal = Calibration(cal.knots, cal.mean, cal.q90, 1.5 * worst, len(spread))
    return cal


def calibrations_from_metadata(meta: Mapping[str, Any]) -> dict[int, Calibration]:
    """Number of stages run -> calibration, from a checkpoint's metadata (may be empty)."""
    raw = meta.get(METADATA_KEY) or {}
    if not isinstance(raw, Mapping):
        raise ValueError("bad uncertainty calibration in the checkpoint: not a mapping")
    return {int(k): Calibration.from_dict(v) for k, v in raw.items()}
