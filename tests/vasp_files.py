"""Small relaxation runs written in VASP's real output formats, for the tests.

ASE reads vasprun.xml and OUTCAR but writes neither, so these writers produce the parts
of the real files that readers use, in VASP's layout (checked against VASP 6.3 output):
vasprun.xml with ``<incar>``, ``<kpoints>``, ``<parameters>`` (the ``ionic`` separator
holding NSW, IBRION, ISIF, EDIFFG), ``<atominfo>``, ``<structure name="initialpos">``
(with ``selective`` flags when atoms are fixed), one ``<calculation>`` per ionic step
(``<scstep>`` energies, ``<structure>``, ``<varray name="forces">``, ``stress``,
``<energy>``) and ``<structure name="finalpos">``; OUTCAR with the POTCAR lines (twice,
as VASP prints them), "ions per type", the INCAR echo, and per ionic step the
"Iteration" header, "direct lattice vectors", the POSITION/TOTAL-FORCE block and the
"FREE ENERGIE OF THE ION-ELECTRON SYSTEM" block. The runs themselves are BFGS
relaxations of defective fcc Cu with EMT (cheap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize import BFGS


def cu_host(n: int = 2) -> Atoms:
    """Pristine fcc Cu, n x n x n conventional cells (a = 3.6 Å; 32 sites for n = 2)."""
    return bulk("Cu", "fcc", a=3.6, cubic=True) * (n, n, n)


def defective(host: Atoms, vacancies=(), substitutions=None) -> Atoms:
    """``host`` with vacant sites removed and {site: symbol} substituted, its atoms
    grouped by species as VASP lists them (a different order from the host's)."""
    at = host.copy()
    for site, symbol in (substitutions or {}).items():
        at[site].symbol = symbol
    del at[sorted(vacancies)]
    return at[np.argsort(at.numbers, kind="stable")]


def relaxation(atoms: Atoms, fmax: float = 0.01, steps: int = 100) -> list[Atoms]:
    """The frames of a BFGS relaxation with EMT (cheap), each with its energy and
    forces (a SinglePointCalculator); the first frame is the input."""
    at = atoms.copy()
    at.calc = EMT()
    frames: list[Atoms] = []

    def keep() -> None:
        f = at.copy()
        f.calc = SinglePointCalculator(f, energy=at.get_potential_energy(),
                                       forces=at.get_forces(apply_constraint=False))
        frames.append(f)

    opt = BFGS(at, logfile=None)
    opt.attach(keep, interval=1)
    opt.run(fmax=fmax, steps=steps)
    return frames


def defect_runs(n: int, seed: int = 0, host: Atoms | None = None) -> list[list[Atoms]]:
    """``n`` EMT relaxations of one or two vacancies and an Au or Ag substitution in
    ``host`` (default: :func:`cu_host`), as lists of frames."""
    host = cu_host() if host is None else host
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        sites = rng.choice(len(host), size=3, replace=False).tolist()
        vacancies = sites[1:] if k % 2 else sites[1:2]
        out.append(relaxation(defective(host, vacancies, {sites[0]: ("Au", "Ag")[k % 2]})))
    return out


# ------------------------------------------------------------------ vasprun.xml
def _v(rows: np.ndarray, indent: str) -> str:
    return "".join(f"{indent}<v>" + "".join(f" {x:16.8f}" for x in row) + " </v>\n"
                   for row in np.atleast_2d(rows))


def _structure(atoms: Atoms, name: str | None, indent: str = "  ") -> str:
    head = f'{indent}<structure name="{name}" >\n' if name else f"{indent}<structure>\n"
    cell = atoms.cell[:]
    s = (head + f"{indent} <crystal>\n{indent}  <varray name=\"basis\" >\n"
         + _v(cell, indent + "   ") + f"{indent}  </varray>\n"
         f"{indent}  <i name=\"volume\"> {atoms.get_volume():16.8f} </i>\n"
         f"{indent}  <varray name=\"rec_basis\" >\n"
         + _v(np.linalg.inv(cell).T, indent + "   ") + f"{indent}  </varray>\n"
         f"{indent} </crystal>\n{indent} <varray name=\"positions\" >\n"
         + _v(atoms.get_scaled_positions(wrap=False), indent + "  ")
         + f"{indent} </varray>\n")
    fixed = set()
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed |= set(c.get_indices().tolist())
    if fixed and name == "initialpos":
        s += f'{indent} <varray name="selective"  type="logical" >\n'
        for i in range(len(atoms)):
            flag = "F" if i in fixed else "T"
            s += f'{indent}  <v type="logical" >  {flag}  {flag}  {flag} </v>\n'
        s += f"{indent} </varray>\n"
    return s + f"{indent}</structure>\n"


def _energies(e: float, indent: str) -> str:
    return "".join(f'{indent}<i name="{key}"> {e:16.8f} </i>\n'
                   for key in ("e_fr_energy", "e_wo_entrp", "e_0_energy"))


def _calculation(atoms: Atoms) -> str:
    """One ionic step: three SCF steps converging to the energy, then the structure,
    forces, stress and energy of the step."""
    e = float(atoms.get_potential_energy())
    scsteps = "".join('  <scstep>\n   <time name="dav">    1.00    1.00</time>\n'
                      f"   <energy>\n{_energies(e + de, '    ')}   </energy>\n  </scstep>\n"
                      for de in (0.3, 0.01, 0.0))
    return (" <calculation>\n" + scsteps + _structure(atoms, None, "  ")
            + '  <varray name="forces" >\n'
            + _v(atoms.get_forces(apply_constraint=False), "   ") + "  </varray>\n"
            + '  <varray name="stress" >\n' + _v(np.zeros((3, 3)), "   ") + "  </varray>\n"
            + f"  <energy>\n{_energies(e, '   ')}  </energy>\n"
            + '  <time name="totalsc">    3.00    3.00</time>\n </calculation>\n')


def write_vasprun(path: str | Path, frames: list[Atoms], *, ediffg: float = -0.02,
                  nsw: int = 200, ibrion: int = 2, isif: int = 2,
                  complete: bool = True) -> Path:
    """``frames`` (each with energy and forces) as a vasprun.xml; ``complete=False``
    cuts the file inside the last ionic step, as a killed run leaves it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = frames[0]
    symbols = first.get_chemical_symbols()
    types = list(dict.fromkeys(symbols))
    if symbols != sorted(symbols, key=types.index):
        raise ValueError("VASP files list atoms grouped by species")
    counts = [symbols.count(t) for t in types]
    atom_rows = "".join(f"    <rc><c>{s:<2}</c><c>{types.index(s) + 1:4d}</c></rc>\n"
                        for s in symbols)
    type_rows = "".join(f"    <rc><c>{c:4d}</c><c>{t:<2}</c><c> 1.00000000</c>"
                        f"<c> 6.00000000</c><c>  PAW_PBE {t} 06Sep2000 </c></rc>\n"
                        for t, c in zip(types, counts))
    text = ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<modeling>\n <generator>\n'
            '  <i name="program" type="string">vasp </i>\n'
            '  <i name="version" type="string">6.3.0  </i>\n </generator>\n'
            ' <incar>\n'
            f'  <i type="int" name="IBRION">     {ibrion}</i>\n'
            f'  <i name="EDIFFG">     {ediffg:.8f}</i>\n'
            f'  <i type="int" name="NSW">   {nsw}</i>\n'
            f'  <i type="int" name="ISIF">     {isif}</i>\n </incar>\n'
            ' <kpoints>\n  <generation param="Gamma">\n'
            '   <v type="int" name="divisions">       1        1        1 </v>\n'
            '  </generation>\n  <varray name="kpointlist" >\n'
            '   <v>       0.00000000       0.00000000       0.00000000 </v>\n'
            '  </varray>\n  <varray name="weights" >\n   <v>       1.00000000 </v>\n'
            '  </varray>\n </kpoints>\n'
            ' <parameters>\n  <separator name="electronic" >\n'
            '   <i name="EDIFF">      0.00010000</i>\n  </separator>\n'
            '  <separator name="ionic" >\n'
            f'   <i type="int" name="NSW">  {nsw}</i>\n'
            f'   <i type="int" name="IBRION">     {ibrion}</i>\n'
            f'   <i type="int" name="ISIF">     {isif}</i>\n'
            '   <i name="PSTRESS">      0.00000000</i>\n'
            f'   <i name="EDIFFG">     {ediffg:.8f}</i>\n'
            '   <i name="POTIM">      0.50000000</i>\n  </separator>\n </parameters>\n'
            f' <atominfo>\n  <atoms>    {len(first)} </atoms>\n  <types>   {len(types)} </types>\n'
            '  <array name="atoms" >\n   <dimension dim="1">ion</dimension>\n'
            '   <field type="string">element</field>\n   <field type="int">atomtype</field>\n'
            f'   <set>\n{atom_rows}   </set>\n  </array>\n'
            '  <array name="atomtypes" >\n   <dimension dim="1">type</dimension>\n'
            '   <field type="int">atomspertype</field>\n   <field type="string">element</field>\n'
            '   <field>mass</field>\n   <field>valence</field>\n'
            '   <field type="string">pseudopotential</field>\n'
            f'   <set>\n{type_rows}   </set>\n  </array>\n </atominfo>\n'
            + _structure(first, "initialpos", " ")
            + "".join(_calculation(f) for f in frames)
            + _structure(frames[-1], "finalpos", " ") + "</modeling>\n")
    if not complete:  # killed inside the last ionic step
        text = text[:text.rindex("<calculation>") + 200]
    path.write_text(text)
    return path


# ------------------------------------------------------------------ OUTCAR
def write_outcar(path: str | Path, frames: list[Atoms], *, ediffg: float = -0.02,
                 nsw: int = 200, ibrion: int = 2, converged: bool = True,
                 complete: bool = True) -> Path:
    """``frames`` as an OUTCAR; ``converged`` writes VASP's "reached required accuracy"
    line, ``complete`` its closing timing summary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    symbols = frames[0].get_chemical_symbols()
    types = list(dict.fromkeys(symbols))
    counts = [symbols.count(t) for t in types]
    potcars = "".join(f"   POTCAR:    PAW_PBE {t} 06Sep2000\n" for t in types)
    lines = [" vasp.6.3.0 20Jan22 (build Apr 13 2022 00:06:35) complex\n", "\n",
             " INCAR:\n", potcars, "\n", potcars,
             f"   ions per type =   {''.join(f'{c:6d}' for c in counts)}\n",
             ("\n Dimension of arrays:\n   k-points           NKPTS =      1   k-points in BZ"
              "     NKDIM =      1   number of bands    NBANDS=     48\n"),
             f"   NIONS  =     {len(symbols)}\n",
             "   ISPIN  =      1    spin polarized calculation?\n",
             f"   NSW    =    {nsw}    number of steps for IOM\n",
             f"   IBRION =      {ibrion}    ionic relax: 0-MD 1-quasi-New 2-CG\n",
             "   ISIF   =      2    stress and relaxation\n",
             f"   EDIFFG = {ediffg:.1E}   stopping-criterion for IOM\n", "\n",
             " k-points in reciprocal lattice and weights: K-Points\n",
             "   0.00000000  0.00000000  0.00000000       1.000\n", "\n"]
    for step, at in enumerate(frames, 1):
        e = float(at.get_potential_energy())
        cell = at.cell[:]
        rec = np.linalg.inv(cell).T
        lines.append(f"--------------------------------------- Iteration {step:6d}(   1)"
                     "  ---------------------------------------\n\n")
        lines.append(f"  free energy    TOTEN  = {e + 0.01:18.8f} eV\n\n")
        lines.append("  in kB       0.00000     0.00000     0.00000     0.00000     0.00000"
                     "     0.00000\n\n")
        lines.append("      direct lattice vectors                 reciprocal lattice vectors\n")
        lines += [f"  {a[0]:13.9f}{a[1]:13.9f}{a[2]:13.9f}  {b[0]:13.9f}{b[1]:13.9f}"
                  f"{b[2]:13.9f}\n" for a, b in zip(cell, rec)]
        lines.append("\n POSITION                                       TOTAL-FORCE (eV/Angst)\n")
        lines.append(" " + "-" * 83 + "\n")
        forces = at.get_forces(apply_constraint=False)
        lines += [f" {p[0]:12.5f}{p[1]:13.5f}{p[2]:13.5f}{f[0]:17.6f}{f[1]:14.6f}{f[2]:14.6f}\n"
                  for p, f in zip(at.positions, forces)]
        lines.append(" " + "-" * 83 + "\n")
        lines.append("    total drift:                                0.000000      0.000000"
                     "      0.000000\n\n")
        lines.append("  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)\n")
        lines.append("  ---------------------------------------------------\n")
        lines.append(f"  free  energy   TOTEN  = {e:18.8f} eV\n\n")
        lines.append(f"  energy  without entropy= {e:18.8f}  energy(sigma->0) = {e:18.8f}\n")
        lines.append("\n")
    if converged:
        lines.append(" reached required accuracy - stopping structural energy minimisation\n")
    if complete:
        lines.append("\n General timing and accounting informations for this job:\n"
                     " ========================================================\n")
    path.write_text("".join(lines))
    return path
