"""Stratified, seeded, prefix-stable train/val/test assignment (8:1:1).

Within each stratum (material, density, concentration) the k-th configuration falls in
block ``k // 10``; every block is a seeded permutation of 8 "train", 1 "val", 1 "test".
Growing a data set therefore never changes the split of the configurations it had.
"""

from __future__ import annotations

import zlib

import numpy as np

SPLITS = ("train", "val", "test")
BLOCK = ("train",) * 8 + ("val", "test")


def assign_split(stratum: str, k: int, seed: int = 0) -> str:
    """Split of the ``k``-th configuration of ``stratum``."""
    rng = np.random.default_rng([seed, zlib.crc32(stratum.encode()), k // len(BLOCK)])
    return BLOCK[rng.permutation(len(BLOCK))[k % len(BLOCK)]]
