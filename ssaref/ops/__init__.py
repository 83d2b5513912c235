"""Pure array ops, forward and backward side by side, for numpy and cupy alike.

See docs/internals.md ("ops") for the contract and ``im2col.py`` for the memory layout
(NCHW views of batch-innermost buffers) that conv and pool outputs share.  The functions of
``im2col.py`` are not re-exported here: ``ssaref.ops.im2col`` stays the module (a function of
the same name would shadow it); call ``ssaref.ops.im2col.im2col``.
"""

from .activations import (
    flatten_backward,
    flatten_forward,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    tanh_backward,
    tanh_forward,
)
from .conv import conv2d_backward_input, conv2d_backward_params, conv2d_forward
from . import im2col
from .linear import linear_backward_input, linear_backward_params, linear_forward
from .losses import log_softmax, one_hot, softmax, softmax_cross_entropy, softmax_cross_entropy_backward
from .norm import batchnorm_backward_input, batchnorm_backward_params, batchnorm_forward
from .pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool_backward,
    global_avgpool_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "linear_forward",
    "linear_backward_input",
    "linear_backward_params",
    "im2col",
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_params",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "global_avgpool_forward",
    "global_avgpool_backward",
    "relu_forward",
    "relu_backward",
    "tanh_forward",
    "tanh_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "flatten_forward",
    "flatten_backward",
    "batchnorm_forward",
    "batchnorm_backward_input",
    "batchnorm_backward_params",
    "softmax",
    "log_softmax",
    "one_hot",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
]
