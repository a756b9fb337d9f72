"""Training pairs as graphs: built once, cached, batched.

Sources: ``ase.db`` files of the pair schema (:mod:`ase_definet.data.store`), the real
2DMD folder layout (:mod:`ase_definet.data.twodmd`), relaxation runs (vasprun.xml,
OUTCAR, POSCAR/CONTCAR folders, ASE trajectories; :mod:`ase_definet.data.runs`) and
extxyz files of alternating (unrelaxed, relaxed) frames, the last two with their
pristine host(s).
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.io import read
from tqdm.auto import tqdm

from ..core.fileio import atomic_write
from ..core.matching import DEFAULT_TOLERANCE, match_to_host
from ..data.store import Pair, expand_paths, iter_pairs, pair_from_match
from ..graph import Graph, GraphBatch, collate

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """One training example.

    Attributes:
        graph: the defect graph at the unrelaxed coordinates.
        target: (n_sites, 3) Å relaxed coordinates (vacancy rows: the input, unused).
        mask: (n_sites,) bool, True for atoms (False for vacancy placeholders).
        info: material, density, split, ... of the pair.
        soft: (n_sites, 3) Å a trained model's prediction, the second target of
            distillation (``None`` without one; see :func:`~.staging.distilled_dataset`).
    """

    graph: Graph
    target: np.ndarray
    mask: np.ndarray
    info: dict[str, Any]
    soft: np.ndarray | None = None

    @property
    def defect_sites(self) -> np.ndarray:
        return np.flatnonzero(self.graph.markers > 0)

    def moved_to(self, positions: np.ndarray) -> Sample:
        """The same pair starting from other site ``positions`` (n_sites, 3) Å, on the
        same edges (a refinement stage's input); distances to the defects, which
        define the A3-A6 regions, stay those of the original start."""
        g = self.graph
        graph = Graph(g.numbers, g.markers, np.asarray(positions, dtype=float),
                      g.edge_index, g.shifts, g.cell)
        moved = Sample(graph=graph, target=self.target, mask=self.mask, info=self.info,
                       soft=self.soft)
        moved._near = self.near_defect()
        return moved

    def near_defect(self) -> np.ndarray:
        """(n_sites,) periodic distance (Å) of every site to the nearest defect site."""
        if getattr(self, "_near", None) is None:
            from .metrics import distance_to_defects

            self._near = distance_to_defects(self.graph.positions, self.graph.cell,
                                             self.defect_sites)
        return self._near


def pair_to_sample(pair: Pair, cutoff: float, max_neighbors: int | None) -> Sample:
    """The graph of a pair's unrelaxed structure (built by
    :meth:`~ase_definet.core.structure.DefectStructure.graph`, as at inference) and its
    per-site targets."""
    s = pair.structure
    target = s.site_positions.copy()
    target[s.atom_sites] = pair.relaxed_positions
    mask = np.zeros(s.n_sites, dtype=bool)
    mask[s.atom_sites] = True
    info = {k: v for k, v in pair.info.items() if isinstance(v, (str, int, float, bool))}
    return Sample(graph=s.graph(cutoff, max_neighbors), target=target, mask=mask, info=info)


class PairDataset(torch.utils.data.Dataset):
    """A list of :class:`Sample` (graphs built once)."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def elements(self) -> list[int]:
        return sorted({int(z) for s in self.samples for z in np.unique(s.graph.numbers)})

    @classmethod
    def from_pairs(cls, pairs: Iterable[Pair], cutoff: float, max_neighbors: int | None,
                   progress: bool = True) -> PairDataset:
        return cls([pair_to_sample(p, cutoff, max_neighbors)
                    for p in tqdm(pairs, desc="building graphs", unit="pair",
                                  disable=None if progress else True)])

    def subset(self, **where: Any) -> PairDataset:
        """Samples whose info matches every key, e.g. ``split="val"``."""
        return PairDataset([s for s in self.samples
                            if all(s.info.get(k) == v for k, v in where.items())])


@dataclass
class Batch:
    """A training batch: the graph batch, targets (N, 3) Å, the atom mask (N,) and, when
    every sample carries one, the distilled model's predictions ``soft`` (N, 3) Å."""

    graph: GraphBatch
    target: torch.Tensor
    mask: torch.Tensor
    infos: list[dict[str, Any]]
    soft: torch.Tensor | None = None

    def to(self, device, dtype=None) -> Batch:
        def move(t):
            return t.to(device=device, dtype=dtype or t.dtype)

        return Batch(self.graph.to(device, dtype), move(self.target), self.mask.to(device),
                     self.infos, None if self.soft is None else move(self.soft))


def collate_samples(samples: Sequence[Sample], dtype: torch.dtype = torch.float32) -> Batch:
    def rows(arrays):
        return torch.from_numpy(np.concatenate(arrays)).to(dtype)

    soft = [s.soft for s in samples]
    return Batch(graph=collate([s.graph for s in samples], dtype=dtype),
                 target=rows([s.target for s in samples]),
                 mask=torch.from_numpy(np.concatenate([s.mask for s in samples])),
                 infos=[s.info for s in samples],
                 soft=None if any(x is None for x in soft) else rows(soft))


def iter_batches(dataset: PairDataset, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None, rank: int = 0,
                 world_size: int = 1) -> Iterator[Batch]:
    """Batches in a seeded random (or fixed) order; with ``world_size > 1`` each rank
    gets every ``world_size``-th batch (DDP)."""
    n = len(dataset)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    batches = [order[a:a + batch_size] for a in range(0, n, batch_size)]
    if world_size > 1:  # equal number of batches per rank
        batches = batches[: len(batches) // world_size * world_size][rank::world_size]
    for b in batches:
        yield collate_samples([dataset[i] for i in b])


# ------------------------------------------------------------------ sources
FORMATS = ("auto", "db", "2dmd", "runs", "extxyz")


def detect_format(sources: Sequence[str | Path], pristine: Any = None) -> str:
    """The data format of ``sources``: ``db`` (ase.db files, folders of them, globs of
    them), ``extxyz`` (alternating-frame .extxyz/.xyz files, with a host), ``runs``
    (relaxation runs, with a host) or ``2dmd`` (a 2DMD root folder)."""
    first = str(sources[0])
    path = Path(first)
    has_glob = any(c in first for c in "*?[")
    if path.suffix == ".db" or (path.is_dir() and any(path.glob("*.db"))):
        return "db"
    if pristine is None:
        if not has_glob and not path.exists():
            return "db"  # expand_paths names the missing path
        if has_glob and all(Path(x).suffix == ".db" for x in glob.glob(first)):
            return "db"
        if path.is_dir():
            return "2dmd"
        raise ValueError(f"{first}: relaxation runs and extxyz pairs need their pristine "
                         "host (--pristine)")
    if all(Path(str(s)).suffix in (".extxyz", ".xyz") and not any(c in str(s) for c in "*?[")
           for s in sources):
        return "extxyz"
    return "runs"


def read_extxyz_pairs(path: str | Path, pristine: Atoms | str | Path | Sequence,
                      tolerance: float = DEFAULT_TOLERANCE) -> list[Pair]:
    """Pairs from an extxyz (or any ase.io) file of alternating unrelaxed and relaxed
    frames, with the pristine host (or several: each pair takes the first whose cell
    and sites match) given separately. Atoms of a relaxed frame are in the order of the
    unrelaxed frame before it."""
    from ..data.runs import load_hosts, match_run

    hosts = load_hosts(pristine)
    frames = read(path, ":")
    if len(frames) % 2:
        raise ValueError(f"{path}: expected alternating unrelaxed/relaxed frames, got an odd "
                         f"number ({len(frames)})")
    pairs = []
    for k in range(0, len(frames), 2):
        unrelaxed, relaxed = frames[k], frames[k + 1]
        if not np.array_equal(unrelaxed.numbers, relaxed.numbers):
            raise ValueError(f"{path}: frames {k} and {k + 1} have different atoms")
        if len(hosts) == 1:  # the matching's own message
            (host,) = hosts.values()
            m = match_to_host(unrelaxed, host, tolerance)
        else:
            try:
                _, host, m = match_run(unrelaxed, hosts, tolerance)
            except ValueError as err:
                raise ValueError(f"{path}, frame {k}: {err}") from None
        info = {"source": str(path), "frame": k // 2, **{key: v for key, v in
                unrelaxed.info.items() if isinstance(v, (str, int, float, bool))}}
        pairs.append(pair_from_match(unrelaxed, relaxed.positions, host, m, info))
    return pairs


def load_pairs(source: str | Path | Sequence[str | Path], *, pristine: Any = None,
               fmt: str = "auto", fmax: float | None = None, **selection: Any) -> list[Pair]:
    """Read pairs from ``ase.db`` files/folders/globs (``fmt="db"``), a 2DMD root
    (``fmt="2dmd"``), relaxation runs with ``pristine`` (``fmt="runs"``: vasprun.xml,
    OUTCAR, POSCAR/CONTCAR folders, trajectories, folders and globs of them; runs that
    did not converge, change cell or match no host are logged and skipped; ``fmax``
    eV/Å checks the last forces of files that state no criterion) or extxyz files of
    alternating frames with ``pristine`` (``fmt="extxyz"``). ``pristine``: one host or
    several (Atoms, paths, globs). ``auto`` picks by :func:`detect_format`."""
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    asked = fmt
    if fmt == "auto":
        fmt = detect_format(sources, pristine)
    if fmt == "db":
        return list(iter_pairs(expand_paths(sources), **selection))
    if fmt in ("extxyz", "runs") and pristine is None:
        raise ValueError(f"{fmt} pairs need the pristine host (--pristine)")
    if fmt == "extxyz":
        return [p for s in sources for p in read_extxyz_pairs(s, pristine)]
    if fmt == "runs":
        from ..data.runs import read_runs

        pairs, report = read_runs(sources, pristine, fmt=asked, fmax=fmax)
        if not pairs and report.skipped:
            raise ValueError(f"every relaxation run was skipped ({report.summary()}); "
                             f"the first: {report.skipped[0][0]}: {report.skipped[0][1]}")
        return pairs
    if fmt == "2dmd":
        from ..data.twodmd import read_2dmd

        return [p for s in sources for p in read_2dmd(s, **selection)]
    raise ValueError(f"unknown data format {fmt!r}; choose from {list(FORMATS)}")


def cache_key(paths: Sequence[Path], cutoff: float, max_neighbors: int | None) -> str:
    h = hashlib.sha1(f"{cutoff}|{max_neighbors}|v1".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_dataset(paths: Sequence[str | Path], cutoff: float, max_neighbors: int | None,
                 cache_dir: str | Path | None = None, progress: bool = True) -> PairDataset:
    """All converged pairs of ``ase.db`` files as a :class:`PairDataset`; the built graphs
    are cached in ``cache_dir`` (keyed by the files and graph settings)."""
    files = expand_paths(paths)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"graphs-{cache_key(files, cutoff, max_neighbors)}.pt"
        if cache.exists():
            try:
                return PairDataset([_sample_from_dict(d) for d in
                                    torch.load(cache, weights_only=True)])
            except Exception as err:  # noqa: BLE001  a corrupt cache is rebuilt, not fatal
                logger.warning("graph cache %s is unreadable (%s: %s); rebuilding it", cache,
                               type(err).__name__, str(err).split(". ")[0])
    ds = PairDataset.from_pairs(iter_pairs(files), cutoff, max_neighbors, progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: torch.save([_sample_to_dict(s) for s in ds.samples],
                                                   tmp))
    return ds


def _sample_to_dict(s: Sample) -> dict[str, Any]:
    g = s.graph
    return {"numbers": torch.from_numpy(g.numbers), "markers": torch.from_numpy(g.markers),
            "positions": torch.from_numpy(g.positions),
            "edge_index": torch.from_numpy(g.edge_index),
            "shifts": torch.from_numpy(g.shifts), "cell": torch.from_numpy(g.cell),
            "target": torch.from_numpy(s.target), "mask": torch.from_numpy(s.mask),
            "info": dict(s.info)}


def _sample_from_dict(d: dict[str, Any]) -> Sample:
    g = Graph(numbers=d["numbers"].numpy(), markers=d["markers"].numpy(),
              positions=d["positions"].numpy(), edge_index=d["edge_index"].numpy(),
              shifts=d["shifts"].numpy(), cell=d["cell"].numpy())
    return Sample(graph=g, target=d["target"].numpy(), mask=d["mask"].numpy(), info=d["info"])
