"""One builder per model; importing this package registers every family."""
from kcnn.models.allconv import allcnn_a, allcnn_b, allcnn_c
from kcnn.models.resnet import (
    resnet18, resnet20, resnet32, resnet34, resnet44, resnet50, resnet56, resnet101, resnet110, resnet152,
)
from kcnn.models.vgg import vgg11, vgg13, vgg16, vgg19, vgg_cifar

__all__ = [
    "allcnn_a", "allcnn_b", "allcnn_c", "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet50",
    "resnet56", "resnet101", "resnet110", "resnet152", "vgg11", "vgg13", "vgg16", "vgg19",
    "vgg_cifar",
]
