"""minise.functional: every differentiable op, with PyTorch's names, signatures and layouts.

Each op is a :class:`~minise.autograd.Function` subclass (``Conv2dOp``, ``BatchNormOp``,
``SqueezeExciteOp``, ...) whose forward and backward are written on arrays, with its formula in the
docstring; the lower-case functions here check their input and apply the op.
"""

from minise.functional.conv import conv2d, conv2d_relu
from minise.functional.dropout import dropout
from minise.functional.elementwise import abs, exp, log, relu, sigmoid, tanh
from minise.functional.linear import linear
from minise.functional.loss import cross_entropy, log_softmax, softmax
from minise.functional.normalization import batch_norm
from minise.functional.pooling import adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d
from minise.functional.shape import flatten
from minise.functional.squeeze_excite import squeeze_excite, squeeze_excite_add_relu

__all__ = [
    "abs",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_relu",
    "cross_entropy",
    "dropout",
    "exp",
    "flatten",
    "global_avg_pool2d",
    "linear",
    "log",
    "log_softmax",
    "max_pool2d",
    "relu",
    "sigmoid",
    "softmax",
    "squeeze_excite",
    "squeeze_excite_add_relu",
    "tanh",
]
