"""Datasets, global splits and node partitioners (plain NumPy/PyTorch)."""

from raykd.data.augment import build_augment
from raykd.data.checks import check_dataset
from raykd.data.datasets import Dataset, Splits, load_dataset, make_splits
from raykd.data.partition import NodeData, label_skew, partition, split_nodes

__all__ = [
    "Dataset",
    "NodeData",
    "Splits",
    "build_augment",
    "check_dataset",
    "label_skew",
    "load_dataset",
    "make_splits",
    "partition",
    "split_nodes",
]
