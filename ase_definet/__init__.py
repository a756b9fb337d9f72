"""ase_definet: one-pass relaxation of crystal point defects with DefiNet, for ASE.

    from ase_definet import DefiNetRelaxer
    DefiNetRelaxer(host, defects={"vacancies": [3], "substitutions": {0: "W"}}).run()
"""

from .checkpoint import available_weights, get_model, load_checkpoint, save_checkpoint
from .defects import DefectSpec
from .model import DefiNet, DefiNetConfig
from .relaxer import DefiNetRelaxer
from .structure import DefectStructure
from .trust import OutOfRangeWarning

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
