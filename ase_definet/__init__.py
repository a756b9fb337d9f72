"""ase_definet: one-pass relaxation of crystal point defects with DefiNet, for ASE.

    from ase_definet import DefiNetRelaxer
    DefiNetRelaxer(host, defects={"vacancies": [3], "substitutions": {0: "W"}}).run()
"""

from .core.checkpoint import available_weights, get_model, load_checkpoint, save_checkpoint
from .core.defects import DefectSpec
from .core.structure import DefectStructure
from .core.trust import OutOfRangeWarning
from .model import DefiNet, DefiNetConfig
from .relaxer import DefiNetRelaxer

__version__ = "0.1.0"

__all__ = [
    "DefectSpec",
    "DefectStructure",
    "DefiNet",
    "DefiNetConfig",
    "DefiNetRelaxer",
    "OutOfRangeWarning",
    "__version__",
    "available_weights",
    "get_model",
    "load_checkpoint",
    "save_checkpoint",
]
