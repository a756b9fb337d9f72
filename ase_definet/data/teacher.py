"""The teacher: an ASE calculator that labels (unrelaxed, relaxed) pairs.

CHGNet (a universal ML potential, not DFT) is the default teacher; it is an optional
dependency (``pip install 'ase_definet[teacher]'``). Any ASE calculator can be used
instead by passing it to the labelling functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from functools import lru_cache

from ase.calculators.calculator import Calculator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def first_derivatives_only() -> Iterator[None]:
    """Within the block, ``torch.autograd.grad`` builds no graph of the gradient.

    CHGNet (0.3-0.4) asks autograd for a differentiable force graph
    (``create_graph=True``) even at inference, which only training needs. Labelling
    takes one derivative, so dropping it makes each energy+force call faster, with
    identical energies and forces equal to float32 rounding (~3e-5 eV/Å). Together with
    skipping stress and magnetic moments (``stress=False`` below), the labelling teacher
    is 1.6-2.0x faster per call than CHGNet's stock calculator on the six 2DMD hosts
    (``python benchmarks/teacher_cost.py``, ``benchmarks/results/teacher_cost.txt``).
    Not thread-safe: it patches ``torch.autograd.grad`` for the duration of the block.
    """
    import torch

    original = torch.autograd.grad

    def grad(*args, **kwargs):
        kwargs["create_graph"] = False
        return original(*args, **kwargs)

    torch.autograd.grad = grad
    try:
        yield
    finally:
        torch.autograd.grad = original


@lru_cache(maxsize=1)
def _chgnet_model():
    try:
        from chgnet.model import CHGNet
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the CHGNet teacher needs the optional dependency 'chgnet': "
                          "pip install 'ase_definet[teacher]'") from err
    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(verbose=False, use_device="cpu")


def chgnet_calculator(device: str = "cpu", stress: bool = False) -> Calculator:
    """CHGNet as an ASE calculator.

    Args:
        device: torch device for CHGNet.
        stress: also compute stress (needed for cell relaxation). Without it only
            energy and forces are computed, which is about 1.5x faster.
    """
    from chgnet.model.dynamics import CHGNetCalculator

    task = "efs" if stress else "ef"

    class _Teacher(CHGNetCalculator):
        implemented_properties = ("energy", "forces", "free_energy") + (
            ("stress",) if stress else ())

        def calculate(self, atoms=None, properties=None, system_changes=None, task=task):
            with first_derivatives_only():
                super().calculate(atoms, properties, system_changes, task=task)

    with contextlib.redirect_stdout(io.StringIO()):
        model = _chgnet_model().to(device)
        return _Teacher(model=model, use_device=device)


def _emt(device: str = "cpu") -> Calculator:
    from ase.calculators.emt import EMT

    return EMT()


def stock_chgnet_calculator(device: str = "cpu") -> Calculator:
    """CHGNet's own ASE calculator as a CHGNet user builds it: no patch, energy, forces,
    stress and magnetic moments (the reference for checks and timings)."""
    model = _chgnet_model()  # raises the install hint if chgnet is missing
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(model=model.to(device), use_device=device)


#: name -> factory(device) of an ASE calculator. "chgnet" labels the data;
#: "chgnet-stock" is CHGNet's own calculator, unpatched (energy, forces, stress and
#: magnetic moments), for checks and timings. EMT (metals only) is for tests and demos.
TEACHERS: dict[str, Callable[..., Calculator]] = {
    "chgnet": lambda device="cpu": chgnet_calculator(device=device),
    "chgnet-stock": stock_chgnet_calculator,
    "emt": _emt,
}


def register_teacher(name: str, factory: Callable[..., Calculator]) -> None:
    """Make an ASE calculator factory ``factory(device=...)`` available by name."""
    TEACHERS[name] = factory


def get_teacher(name: str = "chgnet", device: str = "cpu") -> Calculator:
    """Return a teacher calculator by name; the error lists the valid names."""
    try:
        factory = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {sorted(TEACHERS)}") from None
    return factory(device=device)


def teacher_version(name: str = "chgnet") -> str:
    """A short string naming the teacher and its version, stored with every pair."""
    if name == "chgnet":
        import chgnet
        return f"CHGNet {chgnet.__version__} (model {_chgnet_model().version})"
    if name == "emt":
        import ase

        return f"EMT (ase {ase.__version__})"
    return name
