"""Training pairs from relaxation runs: VASP outputs and ASE trajectories.

A *run* is one relaxation of one defective structure; its first ionic step is the
unrelaxed structure and its last the relaxed one. Sources:

* ``vasprun.xml`` and ``OUTCAR`` (read by :func:`ase.io.read` with ``index=":"``);
* a folder with ``POSCAR`` and ``CONTCAR`` (POSCAR unrelaxed, CONTCAR relaxed);
* any ASE-readable trajectory (``.traj``; with ``fmt="runs"`` also multi-frame extxyz);
* folders of any of these (searched recursively; a folder with a ``vasprun.xml`` is read
  from it, else from its ``OUTCAR``, else from POSCAR/CONTCAR).

The defects of every run are derived by matching its first frame to a pristine host
(:func:`~ase_definet.core.matching.match_to_host`; one host, or one per material: the first
whose cell matches and whose sites take the atoms). Runs are *skipped, with a reason*,
when they did not converge (where the file says so: forces above ``EDIFFG`` in a
vasprun.xml, no "reached required accuracy" in an OUTCAR, an unfinished file, a
trajectory whose last forces exceed an explicit ``fmax``), change their cell, change
their atoms, or do not match a host. Nothing skipped is mixed in silently: every skip is
logged and returned in :class:`RunReport`.

Example::

    pairs, report = read_runs(["runs/*/vasprun.xml"], "host.cif")
    print(report.summary())
"""

from __future__ import annotations

import glob
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from ..core.matching import (DEFAULT_TOLERANCE, Match, cell_change, check_same_cell,
                             match_to_host)
from .store import Pair, pair_from_match

logger = logging.getLogger(__name__)

HostsLike = Atoms | str | Path | Sequence[Atoms | str | Path]  # one host or several

TRAJECTORY_SUFFIXES = (".traj",)
FRAME_SUFFIXES = (".extxyz", ".xyz")  # runs only with fmt="runs" (else alternating pairs)
RELAXING_IBRION = (1, 2, 3)  # VASP's ionic relaxation algorithms


class SkipRun(ValueError):
    """A run that cannot become a training pair (the message says why)."""


@dataclass
class Run:
    """One relaxation run read from its file(s).

    Attributes:
        source: the file (or folder) it was read from.
        frames: ionic steps, first (unrelaxed) to last (relaxed); same atoms, same order.
        converged: True/False where the file says so; None where it gives no criterion.
        info: ``teacher``, ``steps``, ``relax_fmax`` (eV/Å), ``final_fmax`` (eV/Å), ...
    """

    source: Path
    frames: list[Atoms]
    converged: bool | None
    info: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it did not converge


@dataclass
class RunReport:
    """What :func:`read_runs` read: the accepted sources and every skipped one."""

    accepted: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # convergence not stated by the file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    def summary(self) -> str:
        text = (f"{len(self.accepted) + len(self.skipped)} run(s): {len(self.accepted)} "
                f"pair(s), {len(self.skipped)} skipped")
        if self.unchecked:
            text += (f"; convergence not checked for {len(self.unchecked)} (the files "
                     "state no criterion; pass fmax to check their last forces)")
        return text


# ------------------------------------------------------------------ finding runs
def _is_vasp_dir(d: Path) -> bool:
    return any((d / n).is_file() for n in ("vasprun.xml", "OUTCAR")) or (
        (d / "POSCAR").is_file() and (d / "CONTCAR").is_file())


def _run_files_in(folder: Path, fmt: str) -> list[Path]:
    """The runs below ``folder`` (VASP folders and trajectory files), sorted by path."""
    out: list[Path] = []
    suffixes = TRAJECTORY_SUFFIXES + (FRAME_SUFFIXES if fmt == "runs" else ())
    for d in sorted([folder, *(p for p in folder.rglob("*") if p.is_dir())]):
        if _is_vasp_dir(d):
            out.append(d)
        out += [p for p in d.iterdir() if p.is_file() and p.suffix in suffixes]
    return sorted(out)


def find_runs(sources: Iterable[str | Path], fmt: str = "auto") -> list[Path]:
    """Expand files, folders and globs into run sources (files or VASP folders).

    Raises:
        ValueError: a path that does not exist, or nothing found at all.
    """
    out: list[Path] = []
    for s in sources:
        s = str(s)
        paths = ([Path(x) for x in sorted(glob.glob(s))] if any(c in s for c in "*?[")
                 else [Path(s)])
        if not paths:
            raise ValueError(f"no files match {s!r}")
        for p in paths:
            if p.is_dir():
                found = _run_files_in(p, fmt)
                if not found:
                    raise ValueError(f"{p}: no relaxation runs found (vasprun.xml, OUTCAR, "
                                     "POSCAR+CONTCAR or .traj files)")
                out += found
            elif p.exists():
                out.append(p)
            else:
                raise ValueError(f"no such file or folder: {p}")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


# ------------------------------------------------------------------ reading one run
def _free_fmax(atoms: Atoms) -> float | None:
    """Largest force (eV/Å) on the free degrees of freedom, or None without forces."""
    try:
        forces = atoms.get_forces(apply_constraint=True)
    except (RuntimeError, NotImplementedError):  # no calculator, or one without forces
        return None
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


def _energy(atoms: Atoms) -> float | None:
    try:
        return float(atoms.get_potential_energy())
    except (RuntimeError, NotImplementedError):
        return None


def _vasprun_parameters(path: Path) -> tuple[dict[str, float], bool]:
    """(IBRION, NSW, EDIFFG, ISIF of the ``<parameters>`` block, whether the file is
    complete, i.e. ends with ``</modeling>``)."""
    wanted = {"IBRION", "NSW", "EDIFFG", "ISIF", "EDIFF"}
    params: dict[str, float] = {}
    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == "parameters":
                for par in elem.iter("i"):
                    name = par.attrib.get("name")
                    if name in wanted and par.text and par.text.strip():
                        params[name] = float(par.text)
                break
    except ET.ParseError:
        pass
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 512))
        complete = b"</modeling>" in fh.read()
    return params, complete


def _verdict(frames: list[Atoms], params: dict[str, float], file: str) -> tuple[bool, str, dict]:
    """VASP's stopping rule from ``EDIFFG`` (< 0: forces; > 0: energy change)."""
    info: dict[str, Any] = {}
    ibrion, nsw = int(params.get("IBRION", -1)), int(params.get("NSW", 0))
    if nsw == 0 or ibrion not in RELAXING_IBRION:
        kind = "molecular dynamics" if ibrion == 0 else "a single-point run"
        return False, f"not a relaxation (IBRION={ibrion}, NSW={nsw}: {kind})", info
    ediffg = params.get("EDIFFG", 10 * params.get("EDIFF", 1e-4))
    fmax = _free_fmax(frames[-1])
    if fmax is not None:
        info["final_fmax"] = fmax
    if ediffg < 0:
        info["relax_fmax"] = -ediffg
        if fmax is None:
            return False, f"{file} has no forces for its last ionic step", info
        if fmax > -ediffg * (1 + 1e-6):
            return False, (f"not converged: largest force {fmax:.3f} eV/Å above "
                           f"|EDIFFG| = {-ediffg:g} eV/Å after {len(frames)} ionic steps"), info
        return True, "", info
    if len(frames) >= nsw:
        return False, f"stopped at NSW = {nsw} ionic steps (energy criterion EDIFFG > 0)", info
    if len(frames) > 1:
        de = abs((_energy(frames[-1]) or 0.0) - (_energy(frames[-2]) or 0.0))
        if de > ediffg:
            return False, (f"not converged: last energy change {de:.2g} eV above EDIFFG = "
                           f"{ediffg:g} eV"), info
    return True, "", info


def read_vasprun(path: str | Path) -> Run:
    """A run from a ``vasprun.xml``: every ``<calculation>`` block (ASE's reader) and
    the verdict of VASP's own criterion (``EDIFFG``, ``NSW``, ``IBRION``)."""
    path = Path(path)
    params, complete = _vasprun_parameters(path)
    try:
        frames = read(path, index=":", format="vasp-xml")
    except Exception as err:  # noqa: BLE001  ASE raises several types on broken files
        raise SkipRun(f"unreadable vasprun.xml ({type(err).__name__}: {err})") from None
    if not frames:
        raise SkipRun("no ionic step in the file")
    info = {"teacher": "vasp", "steps": len(frames)}
    if not complete:
        return Run(path, frames, False, info, "unfinished run (the file ends before "
                                              "</modeling>)")
    ok, reason, extra = _verdict(frames, params, "vasprun.xml")
    return Run(path, frames, ok, {**info, **extra}, reason)


_OUTCAR_PARAM = re.compile(r"^\s*(IBRION|NSW|EDIFFG|ISIF)\s*=\s*([-+.\dEe]+)", re.MULTILINE)


def read_outcar(path: str | Path) -> Run:
    """A run from an ``OUTCAR``: every ionic step (ASE's reader) and VASP's verdict, the
    line "reached required accuracy - stopping structural energy minimisation"."""
    path = Path(path)
    text = path.read_text(errors="replace")
    params = {k: float(v) for k, v in _OUTCAR_PARAM.findall(text)}
    try:
        frames = read(path, index=":", format="vasp-out")
    except Exception as err:  # noqa: BLE001
        raise SkipRun(f"unreadable OUTCAR ({type(err).__name__}: {err})") from None
    if not frames:
        raise SkipRun("no ionic step in the file")
    info: dict[str, Any] = {"teacher": "vasp", "steps": len(frames)}
    fmax = _free_fmax(frames[-1])
    if fmax is not None:
        info["final_fmax"] = fmax
    if params.get("EDIFFG", 0) < 0:
        info["relax_fmax"] = -params["EDIFFG"]
    ibrion, nsw = int(params.get("IBRION", 1)), int(params.get("NSW", 1))
    if nsw == 0 or ibrion not in RELAXING_IBRION:
        return Run(path, frames, False, info, f"not a relaxation (IBRION={ibrion}, NSW={nsw})")
    if "reached required accuracy" in text:
        return Run(path, frames, True, info)
    if "General timing and accounting" not in text:
        return Run(path, frames, False, info, "unfinished run (no timing summary at the end)")
    return Run(path, frames, False, info, f"not converged: VASP stopped after {len(frames)} "
                                          "ionic steps without reaching the required accuracy")


def read_poscar_contcar(folder: str | Path) -> Run:
    """A run from a folder's POSCAR (unrelaxed) and CONTCAR (relaxed); convergence is
    not stated by these files (None)."""
    folder = Path(folder)
    if not (folder / "CONTCAR").is_file() or (folder / "CONTCAR").stat().st_size == 0:
        raise SkipRun("no CONTCAR (or an empty one): the run did not finish")
    frames = [read(folder / "POSCAR", format="vasp"), read(folder / "CONTCAR", format="vasp")]
    return Run(folder, frames, None, {"teacher": "vasp", "steps": 2})


def read_trajectory(path: str | Path, fmax: float | None = None) -> Run:
    """A run from any ASE-readable file of frames (``.traj``, multi-frame extxyz, ...).
    Converged is None unless ``fmax`` (eV/Å) is given and the last frame has forces."""
    path = Path(path)
    try:
        frames = read(path, index=":")
    except Exception as err:  # noqa: BLE001
        raise SkipRun(f"unreadable trajectory ({type(err).__name__}: {err})") from None
    if len(frames) < 2:
        raise SkipRun(f"{len(frames)} frame(s): a run needs its unrelaxed and relaxed frames")
    calc = frames[-1].calc
    info: dict[str, Any] = {"teacher": getattr(calc, "name", None) or "unknown",
                            "steps": len(frames)}
    last = _free_fmax(frames[-1])
    if last is not None:
        info["final_fmax"] = last
    if fmax is None or last is None:
        return Run(path, frames, None, info)
    info["relax_fmax"] = fmax
    if last > fmax:
        return Run(path, frames, False, info, f"not converged: largest force {last:.3f} eV/Å "
                                              f"in the last frame, above fmax = {fmax:g}")
    return Run(path, frames, True, info)


def read_run(source: str | Path, fmt: str = "auto", fmax: float | None = None) -> Run:
    """Read one run from a file or a VASP folder (see the module docstring).

    Raises:
        SkipRun: the source holds no usable run.
    """
    p = Path(source)
    if p.is_dir():
        for name, reader in (("vasprun.xml", read_vasprun), ("OUTCAR", read_outcar)):
            if (p / name).is_file():
                return reader(p / name)
        if (p / "POSCAR").is_file():
            return read_poscar_contcar(p)
        raise SkipRun("no vasprun.xml, OUTCAR or POSCAR in the folder")
    name = p.name.upper()
    if p.suffix == ".xml" and "VASPRUN" in name:
        return read_vasprun(p)
    if "OUTCAR" in name:
        return read_outcar(p)
    if name in ("POSCAR", "CONTCAR"):
        return read_poscar_contcar(p.parent)
    return read_trajectory(p, fmax)


# ------------------------------------------------------------------ hosts and pairs
def load_hosts(pristine: HostsLike) -> dict[str, Atoms]:
    """Pristine hosts by material name (the host's reduced formula, or its file name
    when two hosts share a formula). Accepts Atoms, paths and globs."""
    items = [pristine] if isinstance(pristine, (Atoms, str, Path)) else list(pristine)
    named: list[tuple[str, Atoms]] = []
    for item in items:
        if isinstance(item, Atoms):
            named.append((str(item.info.get("material", "")) or "", item))
            continue
        paths = sorted(glob.glob(str(item))) if any(c in str(item) for c in "*?[") else [item]
        if not paths:
            raise ValueError(f"no pristine host files match {str(item)!r}")
        for path in paths:
            named.append((Path(path).stem, read(path)))
    if not named:
        raise ValueError("no pristine host given")
    formulas = [h.get_chemical_formula(empirical=True) for _, h in named]
    hosts: dict[str, Atoms] = {}
    for (stem, host), formula in zip(named, formulas):
        name = formula if formulas.count(formula) == 1 or not stem else stem
        if name in hosts:
            raise ValueError(f"two pristine hosts are both called {name!r}")
        hosts[name] = host
    return hosts


def match_run(first: Atoms, hosts: dict[str, Atoms], tolerance: float = DEFAULT_TOLERANCE
              ) -> tuple[str, Atoms, Match]:
    """(material, host, match) of the first host that ``first`` matches.

    Raises:
        SkipRun: no host has this cell, or none of those that do takes the atoms.
    """
    errors = []
    for name, host in hosts.items():
        try:
            check_same_cell(first, host)
        except ValueError:
            continue
        try:
            return name, host, match_to_host(first, host, tolerance)
        except ValueError as err:
            errors.append(f"{name}: {err}")
    if not errors:
        cells = "; ".join(f"{n} {h.cell.cellpar().round(3).tolist()}" for n, h in hosts.items())
        raise SkipRun(f"no pristine host has its cell {first.cell.cellpar().round(3).tolist()} "
                      f"(hosts: {cells})")
    raise SkipRun("does not match its host: " + "; ".join(errors))


def run_to_pair(run: Run, hosts: dict[str, Atoms], tolerance: float = DEFAULT_TOLERANCE) -> Pair:
    """The (unrelaxed, relaxed) pair of a converged (or unchecked) run.

    Raises:
        SkipRun: not converged, the cell or the atoms change, or no host matches.
    """
    if run.converged is False:
        raise SkipRun(run.reason or "not converged")
    first, last = run.frames[0], run.frames[-1]
    if len(first) != len(last) or not np.array_equal(first.numbers, last.numbers):
        raise SkipRun(f"the atoms change during the run ({first.get_chemical_formula()} -> "
                      f"{last.get_chemical_formula()})")
    change = cell_change(first, last)
    if change is not None:
        raise SkipRun(f"the cell changes during the run ({change}); DefiNet relaxes positions "
                      "in a fixed cell")
    material, host, m = match_run(first, hosts, tolerance)
    info = {"source": str(run.source), "config_id": str(run.source), "material": material,
            "converged": True, "convergence_checked": run.converged is True,
            **{k: v for k, v in run.info.items() if v is not None}}
    relaxed_energy = _energy(last)
    if relaxed_energy is not None:
        info["relaxed_energy"] = relaxed_energy
    pair = pair_from_match(first, last.positions, host, m, info)
    energy = _energy(first)
    if energy is not None:  # the schema: the row's own results, at the unrelaxed positions
        try:
            forces = first.get_forces(apply_constraint=False)
        except (RuntimeError, NotImplementedError):
            forces = None
        order = np.argsort(m.site_index, kind="stable")  # pair_from_match's host order
        pair.unrelaxed.calc = SinglePointCalculator(
            pair.unrelaxed, energy=energy, forces=None if forces is None else forces[order])
    return pair


def read_runs(sources: Iterable[str | Path], pristine: HostsLike, *, fmt: str = "auto",
              fmax: float | None = None, tolerance: float = DEFAULT_TOLERANCE
              ) -> tuple[list[Pair], RunReport]:
    """Pairs from relaxation runs (files, VASP folders, globs) against ``pristine``
    (one host or several: Atoms, paths or globs). Skipped runs are logged (warning)
    and listed in the report, never returned as pairs.

    Args:
        fmt: ``"auto"`` or ``"runs"`` (the latter also reads extxyz/xyz files in folders
            as runs).
        fmax: eV/Å, for files that state no criterion of their own (trajectories): skip
            runs whose last frame's forces exceed it.
    """
    hosts = load_hosts(pristine)
    pairs: list[Pair] = []
    report = RunReport()
    for src in find_runs(sources, fmt):
        try:
            run = read_run(src, fmt, fmax)
            pairs.append(run_to_pair(run, hosts, tolerance))
        except SkipRun as err:
            report.skipped.append((str(src), str(err)))
            logger.warning("skipped %s: %s", src, err)
            continue
        report.accepted.append(str(src))
        if run.converged is None:
            report.unchecked.append(str(src))
    logger.info("relaxation runs: %s", report.summary())
    return pairs, report


def write_runs_db(sources: Iterable[str | Path], pristine: HostsLike, out: str | Path, *,
                  fmt: str = "auto", fmax: float | None = None,
                  val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0
                  ) -> tuple[int, RunReport]:
    """Convert runs into an ``ase.db`` of the pair schema (:mod:`.store`). Runs already
    in ``out`` (same ``config_id``, their source path) are not written again. With
    fractions, each new pair gets a ``split`` ("train"/"val"/"test", seeded).

    Returns:
        (number of rows written, the report of :func:`read_runs`).
    """
    from ase.db import connect

    from .store import done_ids, write_pair

    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be >= 0 and sum to less than 1")
    pairs, report = read_runs(sources, pristine, fmt=fmt, fmax=fmax)
    done = done_ids(out)
    new = [p for p in pairs if p.info["config_id"] not in done]
    if val_fraction or test_fraction:
        order = np.random.default_rng(seed).permutation(len(new))
        n_val, n_test = round(val_fraction * len(new)), round(test_fraction * len(new))
        for rank, i in enumerate(order):
            new[i].info["split"] = ("val" if rank < n_val else
                                    "test" if rank < n_val + n_test else "train")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with connect(out) as db:
        for p in new:
            write_pair(db, p)
    if len(new) < len(pairs):
        logger.info("%d run(s) already in %s, not written again", len(pairs) - len(new), out)
    return len(new), report
