"""The DefiNet network: tensors in, tensors out."""

from .definet import DefiNet, DefiNetConfig, DefiNetLayer
from .scatter import get_backend, set_backend

__all__ = ["DefiNet", "DefiNetConfig", "DefiNetLayer", "get_backend", "set_backend"]
