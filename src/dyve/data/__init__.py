"""Datasets: CIFAR-10 (python archive, JPEG tree, exact subset), MNIST, image folders.

Example:
    >>> from dyve import data
    >>> test = data.load("cifar10-jpeg", "test")  # doctest: +SKIP
    >>> x, y = next(data.batches(test, 64, data.Normalization((0.5,) * 3, (0.25,) * 3)))
"""

from dyve.data import cifar10, mnist
from dyve.data.core import (
    DATASETS,
    ImageSet,
    cache_path,
    data_dir,
    is_prepared,
    load,
    load_images,
    prepare,
)
from dyve.data.loader import Normalization, augment_crop_flip, batches
from dyve.data.sample import load_sample

cifar10.register()
mnist.register()

__all__ = [
    "DATASETS",
    "ImageSet",
    "Normalization",
    "augment_crop_flip",
    "batches",
    "cache_path",
    "data_dir",
    "is_prepared",
    "load",
    "load_images",
    "load_sample",
    "prepare",
]
