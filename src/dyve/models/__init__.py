"""The model zoo: CIFAR ResNets, VGG-16-BN, and small Caffe/AlexNet/SqueezeNet-style nets.

Example:
    >>> from dyve import models
    >>> net = models.create("resnet56_cifar", pretrained=True)  # doctest: +SKIP
"""

from dyve.models import d2nn_cifar, resnet_cifar, small_cifar, vgg_cifar
from dyve.models.core import CIFAR_NORM, MODELS, ModelInfo, create, list_models, model_info
from dyve.models.weights import shipped_meta, shipped_models

resnet_cifar.register()
vgg_cifar.register()
small_cifar.register()
d2nn_cifar.register()

__all__ = [
    "CIFAR_NORM",
    "MODELS",
    "ModelInfo",
    "create",
    "list_models",
    "model_info",
    "shipped_meta",
    "shipped_models",
]
