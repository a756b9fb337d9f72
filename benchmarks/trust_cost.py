"""What the uncertainty and the out-of-range checks cost beside the forward pass.

    OMP_NUM_THREADS=1 python benchmarks/trust_cost.py

On the 8x8 MoS2 cell of benchmarks/benchmark.py (10 % defects), default weights, one
thread: CPU time (medians of 7 after a warm-up) of the forward pass (every layer kept),
of the calibrated per-atom uncertainty from its layers (``trust.assess``), of the
training-domain check (``trust.domain_reasons``; a host's neighbour shells are cached, so
their first computation is timed apart), and of ``DefiNetRelaxer.run()`` end to end.
Writes ``benchmarks/results/trust_cost.txt``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from ase_definet import DefiNetRelaxer, get_model
from ase_definet.core.domain import host_geometry
from ase_definet.core.predict import predict_sites
from ase_definet.core.structure import DefectStructure
from ase_definet.core.trust import assess, domain_reasons

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchmark import structure  # noqa: E402


def cpu_ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    host, spec = structure(8)
    model = get_model("default", "cpu")
    s = DefectStructure.from_host(host, spec)
    layers = predict_sites(model, [s], all_layers=True)[0]
    fwd = cpu_ms(lambda: predict_sites(model, [s], all_layers=True))
    unc = cpu_ms(lambda: assess(model, s, layers, model.config.refine + 1))
    dom = cpu_ms(lambda: domain_reasons(model, s))
    shells = cpu_ms(lambda: host_geometry(host, cached=False))  # a host not seen before
    rel = cpu_ms(lambda: DefiNetRelaxer(host, defects=spec, model=model, logfile=None).run())
    text = ("# OMP_NUM_THREADS=1 python benchmarks/trust_cost.py (CPU ms, medians of 7; "
            "8x8 MoS2, 10 % defects, default weights)\n"
            f"forward pass          {fwd:8.1f}\n"
            f"uncertainty           {unc:8.2f}  ({unc / fwd:.1%} of the forward pass)\n"
            f"domain check          {dom:8.2f}  ({dom / fwd:.1%}; the host's lattice cached)\n"
            f"  a new host's lattice {shells:8.2f}  ({shells / fwd:.1%})\n"
            f"DefiNetRelaxer.run()  {rel:8.1f}\n")
    out = ROOT / "benchmarks/results/trust_cost.txt"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
