"""Screen many defect configurations of one host in batches.

    python examples/screen_configurations.py --n 200 --batch-size 32

Draws random two-defect configurations of 8x8 MoS2, relaxes all of them with one
forward pass per batch, and ranks them by how strongly the lattice relaxes around the
defects (a cheap proxy to pick candidates for DFT).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from ase_definet.batch import relax_many
from ase_definet.core.hosts import get_host
from ase_definet.data.configs import high_density_configs


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=200, help="configurations")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)

    mos2 = replace(get_host("MoS2"), supercell=(args.size, args.size, 1))
    host = mos2.pristine()
    configs = high_density_configs(mos2, args.n, seed=7, concentrations=(0.01,))
    items = [(host, c.spec) for c in configs]
    relaxed = relax_many(items, model=args.model, batch_size=args.batch_size)
    scores = []
    for c, at in zip(configs, relaxed):
        start = host.positions[c.spec.site_index(len(host))]
        scores.append((str(c.spec), float(np.linalg.norm(at.positions - start, axis=1).max())))
    scores.sort(key=lambda s: -s[1])
    for spec, s in scores[:5]:
        print(f"max |dr| = {s:.3f} Å   {spec}")
    return scores


if __name__ == "__main__":
    main()
