"""Datasets, global splits and node partitioners (plain NumPy/PyTorch)."""

from raykd.data.datasets import Dataset, Splits, load_dataset, make_splits
from raykd.data.partition import NodeData, label_skew, partition, split_nodes

__all__ = ["Dataset", "NodeData", "Splits", "label_skew", "load_dataset", "make_splits", "partition", "split_nodes"]
