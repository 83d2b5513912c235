"""Data sets for ssaref: Fashion-MNIST, MNIST, CIFAR-10/100 from their official files, and a synthetic
teacher-network set; look-up, checked download, normalisation and augmentation.

Public API::

    DatasetError, DATASETS, Dataset, load_dataset, find_dataset_dir, augment
"""

from .augment import augment
from .errors import DatasetError
from .registry import DATASETS, Dataset, find_dataset_dir, load_dataset

__all__ = ["DatasetError", "DATASETS", "Dataset", "load_dataset", "find_dataset_dir", "augment"]
