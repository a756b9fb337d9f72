"""Generate teacher-labelled defect pairs into chunked ``ase.db`` files.

Each (material, density) sequence of configurations is cut into batches of
``batch_size``; batch ``b`` is the file ``{out}/{material}_{density}_{b:03d}.db``. A batch
is filled in ``{partial_dir}`` one transaction per pair and moved into ``out`` once every
configuration of it has been labelled, so files in ``out`` are complete and never
rewritten. Rerunning the same command resumes: labelled ``config_id``s are skipped.
``--shard K/N`` takes every N-th batch file, so shards never share a file.

    python -m ase_definet.data.generate --out data --high 64 --low 320 --workers 1
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from tqdm import tqdm

from .configs import DefectConfig, high_density_configs, low_density_configs
from .hosts import get_host, host_names
from .label import relax_fixed_cell
from .splits import assign_split
from .store import Pair, done_ids, write_pair

logger = logging.getLogger(__name__)

LOW_DENSITY_HOSTS = ("MoS2", "WSe2")


@dataclass(frozen=True)
class Job:
    config: DefectConfig
    file: str  # batch file name
    split: str
    pristine: Atoms  # the host supercell (workers need no host registry)


def plan_jobs(materials: Iterable[str], n_high_per_conc: int, n_low: int, seed: int = 0,
              batch_size: int = 50) -> list[list[Job]]:
    """All jobs grouped by batch file, batches interleaved across materials/densities."""
    groups: list[list[list[Job]]] = []
    for name in materials:
        host = get_host(name)
        pristine = host.pristine()
        seqs = [high_density_configs(host, n_high_per_conc, seed)] if n_high_per_conc else []
        if n_low and name in LOW_DENSITY_HOSTS:
            seqs.append(low_density_configs(host, n_low, seed))
        for configs in seqs:
            counts: dict[str, int] = {}
            batches: list[list[Job]] = []
            for i, c in enumerate(configs):
                stratum = f"{c.material}/{c.density}/" + (
                    f"{c.concentration:.4f}" if c.density == "high" else str(c.spec.n_defects))
                k = counts[stratum] = counts.get(stratum, -1) + 1
                if i % batch_size == 0:
                    batches.append([])
                batches[-1].append(Job(c, f"{c.material}_{c.density}_{i // batch_size:03d}.db",
                                       assign_split(stratum, k, seed), pristine))
            groups.append(batches)
    # round-robin: batch 0 of every group, then batch 1, ...
    out = []
    for b in range(max((len(g) for g in groups), default=0)):
        out += [g[b] for g in groups if b < len(g)]
    return out


_CALC = None


def _init_worker(teacher: str, threads: int, device: str = "cpu") -> None:
    import torch

    torch.set_num_threads(threads)
    global _CALC
    from .teacher import get_teacher

    _CALC = get_teacher(teacher, device=device)


def _label(args) -> tuple[Job, Pair]:
    job, fmax, steps, optimizer, teacher_name = args
    pristine = job.pristine.copy()
    unrelaxed = job.config.spec.apply(pristine)
    res = relax_fixed_cell(unrelaxed, _CALC, fmax=fmax, steps=steps, optimizer=optimizer)
    unrelaxed.calc = SinglePointCalculator(unrelaxed, energy=res.initial_energy,
                                           forces=res.initial_forces)
    c = job.config
    info = dict(config_id=c.config_id, material=c.material, density=c.density,
                concentration=float(c.concentration), n_defects=c.spec.n_defects,
                split=job.split, teacher=teacher_name, optimizer=optimizer,
                relax_fmax=fmax, final_fmax=res.fmax, converged=res.converged,
                steps=res.steps, relaxed_energy=res.energy)
    return job, Pair(unrelaxed, res.positions, pristine, c.spec, info)


def run(out: Path, partial_dir: Path, batches: list[list[Job]], workers: int = 1,
        threads: int = 1, fmax: float = 0.01, steps: int = 1000, optimizer: str = "FIRE",
        teacher: str = "chgnet", device: str = "cpu") -> None:
    """Label every job not yet done; see the module docstring. ``workers`` processes
    with ``threads`` torch threads each run the teacher on ``device``; this process
    writes every finished pair in its own transaction."""
    out.mkdir(parents=True, exist_ok=True)
    partial_dir.mkdir(parents=True, exist_ok=True)
    todo, sizes = [], {}
    for batch in batches:
        name = batch[0].file
        sizes[name] = len(batch)
        if (out / name).exists():
            continue
        done = done_ids(partial_dir / name)
        todo += [j for j in batch if j.config.config_id not in done]
        if not any(j.file == name for j in todo):
            _finish(partial_dir / name, out / name)
    if not todo:
        logger.info("nothing to do: all %d batch files complete", len(batches))
        return
    from .teacher import teacher_version

    tname = teacher_version(teacher)
    args = [(j, fmax, steps, optimizer, tname) for j in todo]
    remaining = {name: n - len(done_ids(partial_dir / name)) for name, n in sizes.items()
                 if not (out / name).exists()}
    if workers <= 1:
        _init_worker(teacher, threads, device)
        n_conv = _store_results(map(_label, args), len(args), out, partial_dir, remaining)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, _init_worker,
                                          (teacher, threads, device)) as pool:
            n_conv = _store_results(pool.imap(_label, args), len(args), out, partial_dir,
                                    remaining)
    logger.info("labelled %d pairs, %d converged", len(args), n_conv)


def _store_results(results, total: int, out: Path, partial_dir: Path,
                   remaining: dict[str, int]) -> int:
    """Write each (job, pair) as it arrives; complete batch files move to ``out``."""
    n_conv = 0
    for job, pair in tqdm(results, total=total, desc="teacher relaxations", unit="pair",
                          disable=None):  # off when not on a terminal (nohup logs)
        path = partial_dir / job.file
        with connect(path) as db:
            write_pair(db, pair)
        n_conv += pair.info["converged"]
        logger.info("%s: %s steps=%d converged=%s", job.file, job.config.config_id,
                    pair.info["steps"], pair.info["converged"])
        remaining[job.file] -= 1
        if remaining[job.file] == 0:
            _finish(path, out / job.file)
    return n_conv


def _finish(partial: Path, final: Path) -> None:
    """Move a complete batch file into place atomically (same file system) or by copy."""
    if not partial.exists():
        return
    tmp = final.with_suffix(".db.tmp")
    shutil.copyfile(partial, tmp)
    os.replace(tmp, final)
    partial.unlink()
    logger.info("batch complete: %s", final)


def select_shard(batches: list[list[Job]], k: int, n: int) -> list[list[Job]]:
    """Shard ``k`` of ``n``: every n-th batch file (sorted by name), so shards of a job
    array never write to the same file; their outputs merge by copying the files."""
    names = sorted({b[0].file for b in batches})
    mine = {name for i, name in enumerate(names) if i % n == k}
    return [b for b in batches if b[0].file in mine]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N, got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data"), help="folder of batch files")
    p.add_argument("--partial-dir", type=Path, default=None,
                   help="folder for batches in progress (default OUT/partial)")
    p.add_argument("--materials", nargs="+", default=["all"], help="host names or 'all'")
    p.add_argument("--high", type=int, default=64, help="high-density configs per concentration")
    p.add_argument("--low", type=int, default=320, help="low-density configs (MoS2, WSe2)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="K/N: this shard of N")
    p.add_argument("--workers", type=int, default=1, help="parallel teacher processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--fmax", type=float, default=0.01, help="eV/Å")
    p.add_argument("--steps", type=int, default=1000, help="optimizer step cap")
    p.add_argument("--optimizer", default="FIRE")
    p.add_argument("--teacher", default="chgnet")
    p.add_argument("--device", default="cpu", help="torch device of the teacher")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run_from_args(args)


def run_from_args(args: argparse.Namespace) -> None:
    """Run the generator from parsed command-line arguments (``definet generate``)."""
    materials = host_names() if args.materials == ["all"] else args.materials
    batches = plan_jobs(materials, args.high, args.low, args.seed, args.batch_size)
    batches = select_shard(batches, *args.shard)
    run(args.out, args.partial_dir or args.out / "partial", batches, workers=args.workers,
        threads=args.threads, fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
        teacher=args.teacher, device=args.device)


if __name__ == "__main__":
    main()
