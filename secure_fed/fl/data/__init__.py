"""Datasets and seeded client partitions for the simulated federation (harness side)."""

from secure_fed.fl.data.datasets import DATASETS, DatasetBundle, load_dataset
from secure_fed.fl.data.partition import (
    SCHEMES,
    class_histogram,
    dirichlet_partition,
    histogram_to_json,
    iid_partition,
    long_tail,
    long_tail_counts,
    make_partition,
)

__all__ = [
    "DATASETS",
    "SCHEMES",
    "DatasetBundle",
    "class_histogram",
    "dirichlet_partition",
    "histogram_to_json",
    "iid_partition",
    "load_dataset",
    "long_tail",
    "long_tail_counts",
    "make_partition",
]
