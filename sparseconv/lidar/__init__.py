"""Per-point classification of airborne LiDAR (LAS/LAZ): features, training, streaming classification."""
from .average import average_checkpoints
from .classify import classify_file, classify_files
from .model import PRETRAINED, PointSegNet, load_checkpoint
from .train import release, train

__all__ = ["PRETRAINED", "PointSegNet", "average_checkpoints", "classify_file", "classify_files", "load_checkpoint",
           "release", "train"]
