"""Per-point classification of airborne LiDAR (LAS/LAZ): features, training, streaming classification."""
from .classify import classify_file
from .model import PRETRAINED, PointSegNet, load_checkpoint
from .train import release, train

__all__ = ["PRETRAINED", "PointSegNet", "classify_file", "load_checkpoint", "release", "train"]
