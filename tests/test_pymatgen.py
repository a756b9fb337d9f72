"""pymatgen Structures wherever ase Atoms are accepted (pymatgen is optional)."""

from __future__ import annotations

import numpy as np
import pytest

from ase_definet import DefectSpec, DefiNetRelaxer
from ase_definet.batch import relax_many

pytest.importorskip("pymatgen.core")
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor


def test_structure_as_atoms_and_pristine(host, spec, model):
    defective = DefectSpec.from_any(spec).apply(host)
    ref = DefiNetRelaxer(defective.copy(), pristine=host, model=model, logfile=None)
    ref.run()
    s_def = AseAtomsAdaptor.get_structure(defective)
    s_host = AseAtomsAdaptor.get_structure(host)
    before = s_def.cart_coords.copy()
    r = DefiNetRelaxer(s_def, pristine=s_host, model=model, logfile=None)
    r.run()
    assert np.allclose(r.atoms.positions, ref.atoms.positions, atol=1e-5)
    assert isinstance(r.relaxed, Structure)  # the type the user passed
    assert np.allclose(r.relaxed.cart_coords, ref.atoms.positions, atol=1e-5)
    assert np.array_equal(s_def.cart_coords, before)  # the user's Structure is untouched
    r2 = DefiNetRelaxer(s_host, defects=spec, model=model, logfile=None)
    r2.run()
    assert np.allclose(r2.atoms.positions, ref.atoms.positions, atol=1e-5)
    assert isinstance(r2.relaxed, Structure)


def test_relax_many_returns_structures_for_structures(host, spec, model):
    s_host = AseAtomsAdaptor.get_structure(host)
    out = relax_many([(s_host, spec), (host, spec)], model=model, progress=False)
    assert isinstance(out[0], Structure) and not isinstance(out[1], Structure)
    assert np.allclose(out[0].cart_coords, out[1].positions, atol=1e-5)


def test_other_types_are_refused(model):
    with pytest.raises(ValueError, match=r"ase.Atoms or a pymatgen Structure"):
        DefiNetRelaxer("MoS2.cif", model=model, logfile=None)
