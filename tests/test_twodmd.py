"""Reader and writer of the 2DMD folder layout, on small layouts built from scratch."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import graphene, mx2
from ase.io import read, write

from ase_definet.core.defects import DefectSpec
from ase_definet.core.hosts import get_host, guess_unit_cell
from ase_definet.data import read_2dmd, write_2dmd
from ase_definet.data.store import Pair
from ase_definet.data.twodmd import canonical_material, find_material_folders, iter_2dmd

POS_ATOL = 1e-6  # Å: ASE's CIF writer keeps full float precision (repr of the fractions)


def mos2_unit(a: float = 3.19, c: float = 20.0, formula: str = "MoS2") -> Atoms:
    at = mx2(formula=formula, kind="2H", a=a, thickness=3.13, vacuum=0.0)
    at.cell[2, 2] = c
    at.positions[:, 2] += c / 2
    at.pbc = True
    at.wrap()
    return at


def mic(delta: np.ndarray, cell: np.ndarray) -> np.ndarray:
    frac = delta @ np.linalg.inv(cell)
    return (frac - np.round(frac)) @ cell


def make_case(unit: Atoms, reps: tuple[int, int, int], spec: DefectSpec, seed: int,
              amp: float = 0.15) -> tuple[Atoms, Atoms, np.ndarray]:
    """(pristine, unrelaxed in our convention, relaxed positions) of one configuration."""
    pristine = unit.repeat(reps)
    unrelaxed = spec.apply(pristine)
    rng = np.random.default_rng(seed)
    relaxed = unrelaxed.positions + rng.uniform(-amp, amp, (len(unrelaxed), 3))
    return pristine, unrelaxed, relaxed


SPECS = {
    "a1": DefectSpec(vacancies=(4, 10), substitutions={0: 74, 5: 34}),  # W_Mo, Se_S
    "a2": DefectSpec(),
    "b7": DefectSpec(vacancies=(1, 2, 26)),
    "c3": DefectSpec(substitutions={3: 74, 9: 74, 13: 34}),
    "zz": DefectSpec(vacancies=(0,), substitutions={8: 34}),
}
SPLIT_OF = {"a1": "train", "a2": "train", "b7": "val", "c3": "test"}  # zz: unassigned


def write_structure(path: Path, atoms: Atoms, positions: np.ndarray, order: np.ndarray,
                    fmt: str = "cif") -> None:
    at = atoms.copy()
    at.positions = positions
    write(path, at[order], format=fmt)


def build_layout(root: Path, folder: str = "MoS2", sdir: str = "CIF", unit: Atoms | None = None,
                 unit_name: str = "MoS2.cif", seed: int = 0, names: str = "cif",
                 shuffle_relaxed: bool = False) -> dict:
    """A 2DMD-style folder: shuffled atom order, wrapped coordinates, csv splits with extra
    columns. Returns id -> (spec, unrelaxed, relaxed positions) in our convention."""
    unit = mos2_unit() if unit is None else unit
    if unit_name:
        write(root / unit_name, unit, format="cif")
    d = root / folder / sdir
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for k, (aid, spec) in enumerate(SPECS.items()):
        _, unrelaxed, relaxed = make_case(unit, (3, 3, 1), spec, seed + k)
        order = rng.permutation(len(unrelaxed))
        rorder = rng.permutation(len(unrelaxed)) if shuffle_relaxed and aid == "c3" else order
        if names == "cif":
            un, rel, fmt = f"{aid}_unrelaxed.cif", f"{aid}_relaxed.cif", "cif"
        else:  # mixed POSCAR-style names
            un, rel, fmt = f"POSCAR_{aid}_unrelaxed", f"{aid}_relaxed.vasp", "vasp"
        write_structure(d / un, unrelaxed, unrelaxed.positions, order, fmt)
        write_structure(d / rel, unrelaxed, relaxed, rorder, fmt)
        expected[aid] = (spec, unrelaxed, relaxed)
    for split in ("train", "val", "test"):
        with open(root / folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "atoms_id", "energy"])
            for i, (aid, s) in enumerate(SPLIT_OF.items()):
                if s == split:
                    w.writerow([i, aid, -1.5 * i])
    return expected


def check_pairs(pairs: list[Pair], expected: dict, unit: Atoms, material: str = "MoS2",
                density: str = "high") -> None:
    assert sorted(p.info["atoms_id"] for p in pairs) == sorted(expected)
    pristine = unit.repeat((3, 3, 1))
    for p in pairs:
        aid = p.info["atoms_id"]
        spec, unrelaxed, relaxed = expected[aid]
        assert p.spec == spec, aid
        assert p.info == {"material": material, "density": density, "source": "2DMD",
                          "split": SPLIT_OF.get(aid, "unassigned"), "atoms_id": aid,
                          "n_defects": spec.n_defects}
        np.testing.assert_allclose(p.pristine.cell[:], pristine.cell[:], atol=POS_ATOL)
        np.testing.assert_allclose(p.pristine.positions, pristine.positions, atol=POS_ATOL)
        np.testing.assert_array_equal(p.pristine.numbers, pristine.numbers)
        np.testing.assert_array_equal(p.unrelaxed.numbers, unrelaxed.numbers)
        np.testing.assert_allclose(p.unrelaxed.positions, unrelaxed.positions, atol=POS_ATOL)
        np.testing.assert_allclose(p.relaxed_positions, relaxed, atol=POS_ATOL)
        np.testing.assert_array_equal(p.site_index, spec.site_index(len(pristine)))


def test_read_recovers_specs_splits_and_positions(tmp_path):
    expected = build_layout(tmp_path)
    # the files really are shuffled and wrapped: the test would fail without the matching
    un = read(tmp_path / "MoS2/CIF/a1_unrelaxed.cif")
    assert not np.array_equal(un.numbers, expected["a1"][1].numbers)
    rel = read(tmp_path / "MoS2/CIF/a1_relaxed.cif")
    frac = rel.get_scaled_positions(wrap=False)
    assert (frac >= 0).all() and (frac < 1).all()
    _spec, unrelaxed, relaxed = expected["a1"]
    assert (relaxed @ np.linalg.inv(unrelaxed.cell[:]) < 0).any()  # so some atoms were wrapped

    pairs = read_2dmd(tmp_path, progress=False)
    check_pairs(pairs, expected, mos2_unit())
    assert [p.info["atoms_id"] for p in pairs] == sorted(expected)
    # minimum-image continuation: relaxed positions close to the unrelaxed ones
    for p in pairs:
        assert np.abs(p.relaxed_positions - p.unrelaxed.positions).max() < 0.2


def test_relaxed_file_in_another_order(tmp_path):
    expected = build_layout(tmp_path, shuffle_relaxed=True)
    un, rel = (read(tmp_path / f"MoS2/CIF/c3_{k}.cif") for k in ("unrelaxed", "relaxed"))
    assert not np.array_equal(un.numbers, rel.numbers) or np.abs(
        mic(un.positions - rel.positions, un.cell[:])).max() > 1.0
    check_pairs(read_2dmd(tmp_path, "MoS2", progress=False), expected, mos2_unit())


def test_low_density_cif_poscar_and_poscar_names(tmp_path):
    low = tmp_path / "low_density"
    low.mkdir()
    write(tmp_path / "MoS2.cif", mos2_unit(), format="cif")  # one level up
    expected = build_layout(low, sdir="CIF_POSCAR", unit_name="", names="poscar")
    assert (low / "MoS2/CIF_POSCAR/POSCAR_a1_unrelaxed").is_file()
    pairs = read_2dmd(low, density="low", progress=False)
    check_pairs(pairs, expected, mos2_unit(), density="low")
    # the iterator variant gives the same pairs
    assert [p.info["atoms_id"] for p in iter_2dmd(low, "MoS2", "low", progress=False)] == \
        sorted(expected)


def test_material_name_aliases(tmp_path):
    hbn = graphene(formula="BN", a=2.51, vacuum=0.0)
    hbn.cell[2, 2] = 20.0
    hbn.positions[:, 2] = 10.0
    hbn.pbc = True
    d = tmp_path / "hBN_spin_500" / "CIF"
    d.mkdir(parents=True)
    write(tmp_path / "BN.cif", hbn, format="cif")
    spec = DefectSpec(vacancies=(3,), substitutions={0: 6})
    _, unrelaxed, relaxed = make_case(hbn, (4, 4, 1), spec, 1)
    write_structure(d / "h1_unrelaxed.cif", unrelaxed, unrelaxed.positions,
                    np.arange(len(unrelaxed))[::-1])
    write_structure(d / "h1_relaxed.cif", unrelaxed, relaxed, np.arange(len(unrelaxed))[::-1])

    bp = guess_unit_cell("BP")
    dp = tmp_path / "P" / "CIF"
    dp.mkdir(parents=True)
    write(tmp_path / "P.cif", bp, format="cif")
    bspec = DefectSpec(vacancies=(5,), substitutions={2: "N"})
    _, bun, brel = make_case(bp, (2, 2, 1), bspec, 2)
    write_structure(dp / "p1_unrelaxed.cif", bun, bun.positions, np.arange(len(bun)))
    write_structure(dp / "p1_relaxed.cif", bun, brel, np.arange(len(bun)))

    assert canonical_material("bn") == "hBN" and canonical_material("P") == "BP"
    assert {k: v.name for k, v in find_material_folders(tmp_path).items()} == \
        {"hBN": "hBN_spin_500", "BP": "P"}
    pairs = read_2dmd(tmp_path, progress=False)
    assert sorted(p.info["material"] for p in pairs) == ["BP", "hBN"]
    for name in ("BN", "hBN", "hbn"):
        (p,) = read_2dmd(tmp_path, material=name, progress=False)
        assert p.info["material"] == "hBN" and p.spec == spec
        assert p.info["split"] == "unassigned"
        np.testing.assert_allclose(p.relaxed_positions, relaxed, atol=POS_ATOL)
    (p,) = read_2dmd(tmp_path, material="BP", progress=False)
    assert p.spec == bspec and p.info["material"] == "BP"
    np.testing.assert_allclose(p.relaxed_positions, brel, atol=POS_ATOL)


@pytest.mark.parametrize("frac_shift", [(0.1, 0.15, 0.03), (0.2, 0.45, 0.025)])
def test_unit_cell_with_shifted_origin(tmp_path, frac_shift):
    """Unit cell CIF whose sites are rigidly translated w.r.t. the supercells (by less and
    by more than the tolerance; without crossing the cell boundary, which would change the
    site order of its supercells)."""
    unit = mos2_unit()
    expected = build_layout(tmp_path, unit=unit, unit_name="")
    shifted = unit.copy()
    shift = np.array(frac_shift) @ unit.cell[:]
    shifted.positions += shift
    assert (shifted.get_scaled_positions(wrap=False) < 1).all()
    assert (np.linalg.norm(shift) < 1.0) == (frac_shift[0] == 0.1)
    write(tmp_path / "MoS2.cif", shifted, format="cif")
    np.testing.assert_allclose(read(tmp_path / "MoS2.cif").positions - unit.positions,
                               [shift] * 3, atol=1e-9)  # the file really is shifted
    pairs = read_2dmd(tmp_path, progress=False)
    check_pairs(pairs, expected, unit)


def our_pairs() -> list[Pair]:
    """Pairs as our generator makes them (built-in hosts, config_id, split)."""
    out = []
    for k, (name, density, spec, split) in enumerate([
            ("MoS2", "high", DefectSpec(vacancies=(3, 100), substitutions={0: "W"}), "train"),
            ("MoS2", "high", DefectSpec(substitutions={7: "Se", 64: "W"}), "unassigned"),
            ("MoS2", "low", DefectSpec(vacancies=(191,)), "test"),
            ("hBN", "high", DefectSpec(vacancies=(2,), substitutions={5: "C"}), "val"),
            ("BP", "high", DefectSpec(substitutions={9: "N"}), "train")]):
        host = get_host(name)
        pristine, unrelaxed, relaxed = make_case(host.unit_cell, host.supercell, spec, k, 0.3)
        pristine.info = {"material": name}
        info = {"config_id": f"{name}-{density}-{k:05d}", "material": name, "density": density,
                "split": split, "converged": True}
        out.append(Pair(unrelaxed, relaxed, pristine, spec, info))
    return out


def assert_same_pairs(got: list[Pair], want: list[Pair]) -> None:
    """Equal up to lattice translations of whole sites (the CIF wraps the unit cell)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.spec == w.spec
        cell = w.pristine.cell[:]
        np.testing.assert_allclose(g.pristine.cell[:], cell, atol=POS_ATOL)
        np.testing.assert_array_equal(g.unrelaxed.numbers, w.unrelaxed.numbers)
        assert np.abs(mic(g.pristine.positions - w.pristine.positions, cell)).max() < POS_ATOL
        assert np.abs(mic(g.unrelaxed.positions - w.unrelaxed.positions, cell)).max() < POS_ATOL
        np.testing.assert_allclose(g.relaxed_positions - g.unrelaxed.positions,
                                   w.relaxed_positions - w.unrelaxed.positions, atol=POS_ATOL)


def test_write_then_read_our_pairs(tmp_path):
    pairs = our_pairs()
    folders = write_2dmd(pairs, tmp_path, progress=False)
    assert sorted(str(f.relative_to(tmp_path)) for f in folders) == \
        ["BP", "MoS2", "hBN", "low_density/MoS2"]
    assert (tmp_path / "BN.cif").is_file() and (tmp_path / "P.cif").is_file()
    assert (tmp_path / "low_density/MoS2/CIF_POSCAR/MoS2-low-00002_relaxed.cif").is_file()
    with open(tmp_path / "MoS2/train.csv") as f:
        assert list(csv.reader(f)) == [["atoms_id"], ["MoS2-high-00000"]]
    high = read_2dmd(tmp_path, progress=False)
    low = read_2dmd(tmp_path / "low_density", density="low", progress=False)
    assert [p.info["density"] for p in low] == ["low"]
    got = {p.info["atoms_id"]: p for p in high + low}
    assert sorted(got) == sorted(p.info["config_id"] for p in pairs)
    for w in pairs:
        g = got[w.info["config_id"]]
        assert g.info["material"] == w.info["material"] and g.info["split"] == w.info["split"]
        assert g.info["density"] == w.info["density"]
        assert_same_pairs([g], [w])
    # the built-in hosts' pristine supercells in their site order
    g = got["MoS2-high-00000"]
    assert np.abs(mic(g.pristine.positions - get_host("MoS2").pristine().positions,
                      g.pristine.cell[:])).max() < POS_ATOL


def test_read_write_read_2dmd_layout(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build_layout(src)
    first = read_2dmd(src, progress=False)
    with pytest.raises(ValueError, match=r"not the ideal supercell|not a supercell"):
        write_2dmd(first, dst, progress=False)  # the built-in MoS2 cell is another one
    assert not dst.exists()  # nothing written on error
    write_2dmd(first, dst, unit_cells={"MoS2": read(src / "MoS2.cif")}, progress=False)
    for split in ("train", "val", "test"):
        with open(src / "MoS2" / f"{split}.csv") as f:
            want = sorted(r["atoms_id"] for r in csv.DictReader(f))
        with open(dst / "MoS2" / f"{split}.csv") as f:
            assert sorted(r["atoms_id"] for r in csv.DictReader(f)) == want
    second = read_2dmd(dst, progress=False)
    assert [p.info for p in second] == [p.info for p in first]
    assert_same_pairs(second, first)


def test_write_refuses_to_overwrite(tmp_path):
    pairs = our_pairs()
    high = [p for p in pairs if p.info["density"] == "high"]
    low = [p for p in pairs if p.info["density"] == "low"]
    write_2dmd(high, tmp_path, progress=False)
    # an identical unit-cell file is not a conflict: low density can be added later
    write_2dmd(low, tmp_path, progress=False)
    before = (tmp_path / "MoS2/CIF/MoS2-high-00000_unrelaxed.cif").read_text()
    moved = [Pair(p.unrelaxed, p.relaxed_positions + 0.01, p.pristine, p.spec, p.info)
             for p in high]
    with pytest.raises(ValueError, match=r"target file\(s\) exist.*overwrite=True"):
        write_2dmd(moved, tmp_path, progress=False)
    assert (tmp_path / "MoS2/CIF/MoS2-high-00000_unrelaxed.cif").read_text() == before
    with pytest.raises(ValueError, match=r"1 target file\(s\) exist.*MoS2\.cif"):
        # a different unit cell is a conflict (the structure files go to a new folder)
        write_2dmd(low, tmp_path, unit_cells={"MoS2": _shifted_unit("MoS2")},
                   low_density_subdir="low2", progress=False)
    write_2dmd(moved, tmp_path, overwrite=True, progress=False)
    again = {p.info["atoms_id"]: p for p in read_2dmd(tmp_path, progress=False)}
    np.testing.assert_allclose(again["MoS2-high-00000"].relaxed_positions
                               - again["MoS2-high-00000"].unrelaxed.positions,
                               moved[0].relaxed_positions - moved[0].unrelaxed.positions,
                               atol=POS_ATOL)


def _shifted_unit(name: str) -> Atoms:
    at = get_host(name).unit_cell.copy()
    at.positions[:, 2] += 0.5
    return at


def test_write_errors(tmp_path):
    (p, *_) = our_pairs()
    bad = Pair(p.unrelaxed, p.relaxed_positions, p.pristine, p.spec, {"density": "high"})
    with pytest.raises(ValueError, match=r"pair 0 has no info\['material'\]"):
        write_2dmd([bad], tmp_path / "a", progress=False)
    for key, value, msg in [("density", "medium", "density must be"),
                            ("split", "holdout", "split must be"),
                            ("config_id", "../x", "not a safe file name"),
                            ("material", "Graphene", "missing unit cell of 'Graphene'")]:
        info = {**p.info, key: value}
        with pytest.raises(ValueError, match=msg):
            write_2dmd([Pair(p.unrelaxed, p.relaxed_positions, p.pristine, p.spec, info)],
                       tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="duplicate atoms_id"):
        write_2dmd([p, p], tmp_path / "a", progress=False)
    wrong = Pair(p.unrelaxed, p.relaxed_positions, p.pristine, DefectSpec(vacancies=(3,)), p.info)
    with pytest.raises(ValueError, match="do not follow its spec"):
        write_2dmd([wrong], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="no pairs"):
        write_2dmd([], tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


def test_read_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_2dmd(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no 2DMD material folder"):
        read_2dmd(tmp_path)
    build_layout(tmp_path)
    with pytest.raises(ValueError, match="density must be"):
        read_2dmd(tmp_path, density="medium")
    with pytest.raises(ValueError, match=r"no folder for material 'WSe2'.*found \['MoS2'\]"):
        read_2dmd(tmp_path, material="WSe2")
    # missing relaxed file: the message names the id
    d = tmp_path / "MoS2" / "CIF"
    (d / "b7_relaxed.cif").rename(tmp_path / "b7_relaxed.cif")
    with pytest.raises(ValueError, match="missing relaxed structure for atoms_id 'b7'"):
        read_2dmd(tmp_path, progress=False)
    # an id listed in a csv without files
    (d / "b7_unrelaxed.cif").rename(tmp_path / "b7_unrelaxed.cif")
    with pytest.raises(ValueError, match=r"atoms_id 'b7' of val.csv .* has no structure files"):
        read_2dmd(tmp_path, progress=False)
    (tmp_path / "b7_unrelaxed.cif").rename(d / "b7_unrelaxed.cif")
    (tmp_path / "b7_relaxed.cif").rename(d / "b7_relaxed.cif")
    # unmatched structure: an atom far from every site; the message names the file
    good = read(d / "c3_unrelaxed.cif")
    at = good.copy()
    at.positions[0, 2] += 4.0
    write(d / "c3_unrelaxed.cif", at, format="cif")
    with pytest.raises(ValueError, match=r"unmatched structure .*c3_unrelaxed\.cif.*Å from"):
        read_2dmd(tmp_path, progress=False)
    skipped = read_2dmd(tmp_path, errors="skip", progress=False)
    assert sorted(p.info["atoms_id"] for p in skipped) == ["a1", "a2", "b7", "zz"]
    # relaxed structure with other elements / another atom count
    write(d / "c3_unrelaxed.cif", good, format="cif")
    rel = read(d / "c3_relaxed.cif")
    rel.numbers[rel.numbers == 74] = 42
    rel.info = {}  # drop the occupancies read from the file
    write(d / "c3_relaxed.cif", rel, format="cif")
    with pytest.raises(ValueError, match=r"c3_relaxed\.cif.* has other elements \(Mo9S17Se\)"):
        read_2dmd(tmp_path, progress=False)
    write(d / "c3_unrelaxed.cif", read(d / "a1_unrelaxed.cif"), format="cif")
    with pytest.raises(ValueError, match=r"c3_relaxed\.cif.* has 27 atoms, the unrelaxed one 25"):
        read_2dmd(tmp_path, progress=False)
    # a cell that is no supercell of the unit cell
    at = read(d / "a1_unrelaxed.cif")
    at.set_cell(at.cell[:] * [1.1, 1.1, 1.0], scale_atoms=True)
    write(d / "c3_unrelaxed.cif", at, format="cif")
    with pytest.raises(ValueError, match=r"c3_unrelaxed\.cif.*not an integer supercell"):
        read_2dmd(tmp_path, progress=False)
    # csv without an atoms_id column
    (tmp_path / "MoS2" / "val.csv").write_text("id\nb7\n")
    with pytest.raises(ValueError, match=r"val\.csv.* has no 'atoms_id' column"):
        read_2dmd(tmp_path, progress=False)
    # missing unit cell
    (tmp_path / "MoS2" / "val.csv").unlink()
    (tmp_path / "MoS2.cif").unlink()
    with pytest.raises(ValueError, match=r"missing unit cell of 'MoS2': none of \['MoS2.cif'\]"):
        read_2dmd(tmp_path, progress=False)
    # missing structure folder
    (tmp_path / "WSe2").mkdir()
    with pytest.raises(ValueError, match="has no CIF/ folder"):
        read_2dmd(tmp_path, material="WSe2")
