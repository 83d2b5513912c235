"""Layers (parameters + initialisation around ops) and models by name."""

from .containers import ResidualBlock, Sequential
from .layers import AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Layer, Linear, MaxPool2d, ReLU, Sigmoid, Tanh
from .models import MODELS, build_model

__all__ = [
    "Layer",
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "Flatten",
    "BatchNorm",
    "Sequential",
    "ResidualBlock",
    "MODELS",
    "build_model",
]
