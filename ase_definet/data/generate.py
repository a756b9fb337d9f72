"""Generate teacher-labelled defect pairs into chunked ``ase.db`` files.

Each (material, axis, density) sequence of configurations is cut into batches of
``batch_size``; batch ``b`` is the file ``{out}/{material}_{density}_{b:03d}.db`` (with
``_{axis}`` before the density off the original lattice). A batch is filled in
``{partial_dir}`` one transaction per pair, under a lock, and moved into ``out`` once the
file holds every configuration of it (:mod:`.batchfiles`). Rerunning the same command
resumes; concurrent runs of one plan share its batches; a larger (prefix-stable) plan
extends a copy of a smaller plan's last batch and replaces it atomically; a run with
other settings than the folder's ``plan.json`` is refused. ``--shard K/N`` takes every
N-th batch file, so shards never share a file.

    python -m ase_definet.data.generate --out data --high 64 --low 320 --workers 1
    definet generate --out data/variety --high 0 --low 80 --strain-high 12 --strain-low 60

Beyond the shipped lattice, ``--strain-*``, ``--pbe-*`` and ``--size-high`` plan the
axes of :mod:`.variants`; every pair records its axis, strain, lattice and supercell.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from tqdm import tqdm

from ..core.hosts import get_host, host_names
from .batchfiles import BatchLock, check_batch, check_identity, finish
from .configs import DefectConfig, high_density_configs, low_density_configs
from .label import predicted_start, relax_fixed_cell, relax_from
from .splits import assign_split
from .store import Pair, done_ids, write_pair
from .variants import relaxed_unit_cell

logger = logging.getLogger(__name__)

#: (axis, density) groups in the order their batches are interleaved: the original lattice
#: first, then the new axes (:mod:`.variants`).
GROUPS = (("original", "high"), ("original", "low"), ("strain", "low"), ("strain", "high"),
          ("pbe", "low"), ("pbe", "high"), ("size", "high"))
AXIS_HELP = {"strain": "on strained lattices", "pbe": "at the 2DMD PBE lattice",
             "size": "in 5x5 to 10x10 supercells"}


@dataclass(frozen=True)
class Job:
    config: DefectConfig
    file: str  # batch file name
    split: str
    pristine: Atoms  # the unstrained host supercell (workers need no host registry)
    unit_cell: Atoms  # the host's shipped unit cell (strained and relaxed by the worker)


@dataclass(frozen=True)
class WarmStart:
    """Which pairs the teacher relaxes from a model's prediction instead of from the
    unrelaxed structure: training pairs of ``densities`` and ``materials`` (None: all)
    only, so val and test labels stay independent of the model."""

    weights: str
    densities: tuple[str, ...] = ("low",)
    materials: tuple[str, ...] | None = None

    def applies(self, job: Job) -> bool:
        return (job.split == "train" and job.config.density in self.densities
                and (self.materials is None or job.config.material in self.materials))


def group_file(material: str, axis: str, density: str, batch: int) -> str:
    """Batch file name: ``MoS2_high_003.db`` on the original lattice,
    ``MoS2_strain_low_000.db`` on another axis."""
    mid = density if axis == "original" else f"{axis}_{density}"
    return f"{material}_{mid}_{batch:03d}.db"


def plan_jobs(materials: Iterable[str], n_high_per_conc: int = 0, n_low: int = 0,
              seed: int = 0, batch_size: int = 50, *,
              counts: dict[tuple[str, str], int] | None = None,
              low_materials: Iterable[str] | None = None,
              max_strain: float = 0.04) -> list[list[Job]]:
    """All jobs grouped by batch file, batches interleaved across groups and materials.

    Args:
        n_high_per_conc, n_low: the original lattice's high-density configurations per
            concentration and low-density configurations.
        counts: (axis, density) -> number for the other axes of :data:`GROUPS` (per
            concentration for high density), e.g. ``{("strain", "low"): 50}``.
        low_materials: the materials that get original-lattice low density (default all).
        max_strain: bound of the strain axis (0.04 = 4 %).
    """
    counts = {("original", "high"): n_high_per_conc, ("original", "low"): n_low,
              **(counts or {})}
    unknown = set(counts) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown (axis, density) groups {sorted(unknown)}; known: {GROUPS}")
    materials = list(materials)
    low_materials = set(materials if low_materials is None else low_materials)
    groups: dict[tuple[str, str, str], list[list[Job]]] = {}
    for name in materials:
        host = get_host(name)
        for axis, density in GROUPS:
            n = counts.get((axis, density), 0)
            if not n or ((axis, density) == ("original", "low") and name not in low_materials):
                continue
            if density == "high":
                configs = high_density_configs(host, n, seed, axis=axis, max_strain=max_strain)
            else:
                configs = low_density_configs(host, n, seed, axis=axis, max_strain=max_strain)
            groups[(axis, density, name)] = _batches(host, configs, axis, seed, batch_size)
    # round-robin: batch 0 of every group (axis-major, then material), then batch 1, ...
    order = sorted(groups, key=lambda g: (GROUPS.index(g[:2]), materials.index(g[2])))
    out = []
    for b in range(max((len(g) for g in groups.values()), default=0)):
        out += [groups[g][b] for g in order if b < len(groups[g])]
    return out


def _batches(host, configs: list[DefectConfig], axis: str, seed: int,
             batch_size: int) -> list[list[Job]]:
    counts: dict[str, int] = {}
    batches: list[list[Job]] = []
    pristines: dict[tuple[int, int], Atoms] = {}
    for i, c in enumerate(configs):
        stratum = f"{c.material}/{c.density}/" + (
            f"{c.concentration:.4f}" if c.density == "high" else str(c.spec.n_defects))
        if axis != "original":
            stratum = f"{c.material}/{axis}/" + stratum.split("/", 1)[1]
        k = counts[stratum] = counts.get(stratum, -1) + 1
        if i % batch_size == 0:
            batches.append([])
        rep = c.lattice.repeat
        if rep not in pristines:
            pristines[rep] = host.pristine((*rep, 1))
        batches[-1].append(Job(c, group_file(c.material, axis, c.density, i // batch_size),
                               assign_split(stratum, k, seed), pristines[rep],
                               host.unit_cell))
    return batches


_CALC = None
_WARM: WarmStart | None = None  # per worker, when labels start warm
_WARM_MODEL: tuple[Any, str] | None = None  # (its model, its name with checksum)


def _init_worker(teacher: str, threads: int, device: str = "cpu",
                 warm: WarmStart | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    global _CALC, _WARM, _WARM_MODEL
    from .teacher import get_teacher

    _CALC = get_teacher(teacher, device=device)
    _WARM = warm
    if warm:
        from ..core.checkpoint import get_model, stored_checksum

        model = get_model(warm.weights, "cpu")  # validated and checksummed on load
        _WARM_MODEL = (model, f"{warm.weights} sha256:{stored_checksum(warm.weights)[:12]}")


_UNIT_CELLS: dict[tuple, Atoms] = {}  # per worker: relaxed strained unit cells


def _host_at_lattice(job: Job) -> Atoms:
    """The pristine supercell of ``job``: at a strained lattice, the teacher's fixed-cell
    relaxation of the strained unit cell, repeated (cached per worker)."""
    lat = job.config.lattice
    if not lat.strained:
        return job.pristine.copy()
    key = (job.config.material, lat.strain)
    if key not in _UNIT_CELLS:
        _UNIT_CELLS[key] = relaxed_unit_cell(job.unit_cell, lat.strain, _CALC)
    pristine = _UNIT_CELLS[key].repeat((*lat.repeat, 1))
    pristine.pbc = True
    pristine.info = dict(job.pristine.info)
    return pristine


def _label(args) -> tuple[Job, Pair]:
    job, fmax, steps, optimizer, teacher_name = args
    pristine = _host_at_lattice(job)
    unrelaxed = job.config.spec.apply(pristine)
    start = {"label_start": "unrelaxed"}
    # only training pairs start warm: val and test labels stay independent of the start
    # model, so evaluating that model on them is not biased towards its own prediction
    if _WARM is not None and _WARM_MODEL is not None and _WARM.applies(job):
        model, name = _WARM_MODEL
        guess = predicted_start(model, pristine, job.config.spec)
        res = relax_from(unrelaxed, guess, _CALC, fmax=fmax, steps=steps, optimizer=optimizer)
        start = {"label_start": "prediction", "start_model": name}
    else:
        res = relax_fixed_cell(unrelaxed, _CALC, fmax=fmax, steps=steps, optimizer=optimizer)
    unrelaxed.calc = SinglePointCalculator(unrelaxed, energy=res.initial_energy,
                                           forces=res.initial_forces)
    c = job.config
    info = dict(config_id=c.config_id, material=c.material, density=c.density,
                concentration=float(c.concentration), n_defects=c.spec.n_defects,
                split=job.split, teacher=teacher_name, optimizer=optimizer,
                relax_fmax=fmax, final_fmax=res.fmax, converged=res.converged,
                steps=res.steps, relaxed_energy=res.energy,
                **c.lattice.info(job.unit_cell), **start)
    return job, Pair(unrelaxed, res.positions, pristine, c.spec, info)


def run(out: Path, partial_dir: Path, batches: list[list[Job]], workers: int = 1,
        threads: int = 1, fmax: float = 0.01, steps: int = 1000, optimizer: str = "FIRE",
        teacher: str = "chgnet", device: str = "cpu",
        identity: dict[str, Any] | None = None, warm: WarmStart | None = None,
        splits: tuple[str, ...] | None = None) -> None:
    """Label every planned pair not yet in a batch file; see the module docstring.

    ``workers`` processes with ``threads`` torch threads each run the teacher on
    ``device``; this process writes every finished pair in its own transaction. Batches
    are locked while being labelled (:mod:`.batchfiles`), so concurrent runs of one plan
    share the work; ``identity`` (seed, batch size, ...) is checked against the one
    stored in ``out``, together with the teacher settings. With ``warm``, the pairs it
    applies to are relaxed from its model's prediction.
    With ``splits`` (e.g. ``("test", "val")``) only those pairs are labelled: their batches
    stay in ``partial_dir`` until a run without ``splits`` labels the rest.
    """
    out.mkdir(parents=True, exist_ok=True)
    partial_dir.mkdir(parents=True, exist_ok=True)
    check_identity(out, {**(identity or {}), "teacher": teacher, "fmax": fmax,
                         "steps": steps, "optimizer": optimizer})
    labeller = _Labeller(workers, threads, teacher, device, (fmax, steps, optimizer), warm)
    group: list[_LockedBatch] = []
    n_total = n_conv = busy = 0
    try:
        for batch in batches:
            name = batch[0].file
            if check_batch(out / name, batch) == "complete":
                continue
            lock = BatchLock(partial_dir / f"{name}.batch-lock")
            if not lock.acquire():
                busy += 1  # another process is labelling it
                continue
            if check_batch(out / name, batch) == "complete":  # finished meanwhile
                lock.release()
                continue
            part = partial_dir / name
            if (out / name).exists() and not part.exists():
                shutil.copyfile(out / name, part)  # a smaller plan's file: extend a copy
            check_batch(part, batch)  # refuse a partial file of another plan
            done = done_ids(part)
            todo = [j for j in batch if j.config.config_id not in done
                    and (splits is None or j.split in splits)]
            if not todo and len(done) < len(batch):  # nothing of these splits left here
                lock.release()
                continue
            group.append(_LockedBatch(batch, lock, todo, len(done) + len(todo) == len(batch)))
            if sum(len(g.todo) for g in group) >= 2 * max(1, workers):
                n, c = _label_group(group, labeller, out, partial_dir)
                n_total, n_conv, group = n_total + n, n_conv + c, []
        n, c = _label_group(group, labeller, out, partial_dir)
        n_total, n_conv, group = n_total + n, n_conv + c, []
    finally:
        labeller.close()
        for g in group:
            g.lock.release()
    if busy:
        logger.info("%d batch file(s) were being labelled by another run: left to it", busy)
    if n_total:
        logger.info("labelled %d pairs, %d converged", n_total, n_conv)
    elif not busy:
        logger.info("nothing to do: all %d batch files complete", len(batches))


class _Labeller:
    """The teacher, in this process or a pool of ``workers``, started on first use."""

    def __init__(self, workers: int, threads: int, teacher: str, device: str,
                 criterion: tuple[float, int, str], warm: WarmStart | None = None) -> None:
        self.workers, self.threads, self.teacher, self.device = workers, threads, teacher, device
        self.criterion, self.warm = criterion, warm
        self._pool = None
        self._name: str | None = None

    def imap(self, jobs: list[Job]):
        if self._name is None:
            from .teacher import teacher_version

            self._name = teacher_version(self.teacher)
            init = (self.teacher, self.threads, self.device, self.warm)
            if self.workers <= 1:
                _init_worker(*init)
            else:
                import multiprocessing as mp

                self._pool = mp.get_context("spawn").Pool(self.workers, _init_worker, init)
        args = [(j, *self.criterion, self._name) for j in jobs]
        return self._pool.imap(_label, args) if self._pool else map(_label, args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


@dataclass
class _LockedBatch:
    """A batch this run holds the lock of: the jobs left to label, and whether the batch
    is whole once they are (with ``splits`` it may stay partial)."""

    batch: list[Job]
    lock: BatchLock
    todo: list[Job]
    whole: bool

    @property
    def file(self) -> str:
        return self.batch[0].file

    def close(self, out: Path, partial_dir: Path) -> None:
        """Move the batch into ``out`` (checked) if whole, and release its lock."""
        try:
            if self.whole:
                finish(partial_dir / self.file, out / self.file, self.batch)
        finally:
            self.lock.release()


def _label_group(group: list[_LockedBatch], labeller: _Labeller, out: Path,
                 partial_dir: Path) -> tuple[int, int]:
    """Label the jobs of the locked batches in ``group``; each pair is written as it
    arrives, and each batch is checked, moved into ``out`` and unlocked once complete.
    Returns (pairs labelled, of which converged)."""
    if not group:
        return 0, 0
    left = {g.file: len(g.todo) for g in group}
    by_file = {g.file: g for g in group}
    for name, n in left.items():
        if n == 0:
            by_file[name].close(out, partial_dir)
    jobs = [j for g in group for j in g.todo]
    n_conv = 0
    for job, pair in tqdm(labeller.imap(jobs), total=len(jobs), desc="teacher relaxations",
                          unit="pair", disable=None):  # off when not on a terminal
        with connect(partial_dir / job.file) as db:
            write_pair(db, pair)
        n_conv += pair.info["converged"]
        logger.info("%s: %s steps=%d converged=%s", job.file, job.config.config_id,
                    pair.info["steps"], pair.info["converged"])
        left[job.file] -= 1
        if left[job.file] == 0:
            by_file[job.file].close(out, partial_dir)
    return len(jobs), n_conv


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
    p.add_argument("--low", type=int, default=320,
                   help="low-density configs (1-3 defects) per material")
    p.add_argument("--low-materials", nargs="+", default=["all"],
                   help="materials that get original-lattice low density")
    for axis, density in GROUPS:  # --strain-high, --strain-low, --pbe-high, ...
        if axis != "original":
            per = "per concentration " if density == "high" else ""
            p.add_argument(f"--{axis}-{density}", type=int, default=0,
                           help=f"{density}-density configs {per}{AXIS_HELP[axis]}")
    p.add_argument("--max-strain", type=float, default=0.04,
                   help="strain bound (0.04 = 4 %%): biaxial, x and y in turn")
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
    p.add_argument("--warm-start", metavar="WEIGHTS", default=None,
                   help="start the teacher from this model's prediction for training "
                   "pairs (fewer steps; val and test pairs stay cold; each pair records "
                   "label_start and start_model; see benchmarks/warm_start.py)")
    p.add_argument("--warm-densities", nargs="+", default=["low"], choices=("low", "high"),
                   help="densities labelled from the warm start (default: %(default)s)")
    p.add_argument("--warm-materials", nargs="+", default=None, metavar="HOST",
                   help="hosts labelled from the warm start (default: all); where the "
                   "warm and the cold labels differ beyond the label noise (soft hosts), "
                   "leave them out")
    p.add_argument("--splits", nargs="+", default=None, choices=("train", "val", "test"),
                   help="label only the pairs of these splits (e.g. test val, to evaluate "
                   "an axis early); their batches stay partial until a run without it")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run_from_args(args)


def run_from_args(args: argparse.Namespace) -> None:
    """Run the generator from parsed command-line arguments (``definet generate``)."""
    materials = host_names() if args.materials == ["all"] else args.materials
    low = None if args.low_materials == ["all"] else args.low_materials
    counts = {(a, d): getattr(args, f"{a}_{d}") for a, d in GROUPS if a != "original"}
    batches = plan_jobs(materials, args.high, args.low, args.seed, args.batch_size,
                        counts=counts, low_materials=low, max_strain=args.max_strain)
    batches = select_shard(batches, *args.shard)
    identity = dict(seed=args.seed, batch_size=args.batch_size, max_strain=args.max_strain)
    run(args.out, args.partial_dir or args.out / "partial", batches, workers=args.workers,
        threads=args.threads, fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
        teacher=args.teacher, device=args.device, identity=identity,
        warm=WarmStart(args.warm_start, tuple(args.warm_densities),
                       tuple(args.warm_materials) if args.warm_materials else None)
        if args.warm_start else None,
        splits=tuple(args.splits) if args.splits else None)


if __name__ == "__main__":
    main()
