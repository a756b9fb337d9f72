"""Training, fine-tuning and evaluation (uses the graph, model and data rooms only)."""

from .dataset import PairDataset, load_dataset, load_pairs
from .trainer import TrainConfig, Trainer

__all__ = ["PairDataset", "TrainConfig", "Trainer", "load_dataset", "load_pairs"]
