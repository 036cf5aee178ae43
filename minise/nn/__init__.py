"""minise.nn: layers as Modules, as in torch.nn."""

from minise.nn.layers import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Identity,
    Linear,
    LogSoftmax,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from minise.nn.module import Module, Parameter, Sequential
from minise.nn.se import SEBlock

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2d",
    "Identity",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "SEBlock",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
]
