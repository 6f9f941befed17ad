"""Encoders: an image batch ``(B, C, H, W)`` to ``out_dim`` unconstrained features.

The model decides what the features mean (Gaussian locations, raw scales, class logits).
"""
import math

from torch import nn


class MLPEncoder(nn.Module):
    """Flatten, then a stack of fully connected layers."""

    def __init__(self, image_shape, out_dim, hidden=(256, 256)):
        super().__init__()
        layers, width = [], math.prod(image_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x):
        return self.head(self.body(x))


class ConvEncoder(nn.Module):
    """Strided 3x3 convolutions that halve the image a few times, then a linear head."""

    def __init__(self, image_shape, out_dim, channels=(32, 64, 64), hidden=256):
        super().__init__()
        c, h, w = image_shape
        layers = []
        for out_c in channels:
            layers += [nn.Conv2d(c, out_c, 3, stride=2, padding=1), nn.GELU()]
            c, h, w = out_c, (h + 1) // 2, (w + 1) // 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, hidden), nn.GELU())
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x):
        return self.head(self.body(x))


ENCODERS = {"mlp": MLPEncoder, "conv": ConvEncoder}
