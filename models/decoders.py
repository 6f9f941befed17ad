"""Decoders: a latent code plus an angle (and optional shift) to an image ``(B, C, H, W)``.

All three rotate by the same convention (:mod:`models.geometry`) and return unconstrained
values (logits for a Bernoulli likelihood, means for a Gaussian one). ``renderer(code)`` gives
the images of one code at any angle: what an angle search calls many times per code.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .geometry import canvas_size, coordinate_grid, inverse_transform


def _mlp(sizes, activation=nn.Tanh):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


def coarsened(images, factor):
    """``images`` averaged over ``factor`` x ``factor`` blocks (unchanged for 1)."""
    return images if factor == 1 else F.avg_pool2d(images, factor)


class Decoder(nn.Module):
    def renderer(self, code):
        """``(angle, shift=None, coarsen=1) -> images`` of these codes, ``coarsen`` times smaller
        per side (decoded afresh at each angle, then averaged over blocks)."""
        return lambda angle, shift=None, coarsen=1: coarsened(self(code, angle, shift), coarsen)


class WarpDecoder(Decoder):
    """Decode a canonical image on a canvas >= sqrt(2) larger, rotate/shift it, crop the window.

    One MLP call per image, then one ``grid_sample``: far cheaper than evaluating an MLP per pixel.
    """

    def __init__(self, image_shape, code_dim, hidden=(256, 256)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        self.canvas = (c, canvas_size(h), canvas_size(w))
        self.net = _mlp([code_dim, *hidden, c * self.canvas[1] * self.canvas[2]])

    def forward(self, code, angle=None, shift=None):
        return self._place(self.net(code).view(-1, *self.canvas), angle, shift)

    def renderer(self, code):
        """``(angle, shift=None, coarsen=1) -> images`` of these codes: the canvas is decoded once,
        then only turned, and sampled ``coarsen`` times more sparsely per side."""
        canvas = self.net(code).view(-1, *self.canvas)
        return lambda angle, shift=None, coarsen=1: self._place(canvas, angle, shift, coarsen)

    def _place(self, canvas, angle, shift, coarsen=1):
        if angle is None and shift is None and coarsen == 1:
            return self._crop(canvas)
        if angle is None:
            angle = canvas.new_zeros(canvas.shape[0])
        c, h, w = self.image_shape
        scale = torch.tensor([w / self.canvas[2], h / self.canvas[1]], device=canvas.device)
        theta = inverse_transform(angle, shift) * scale.view(1, 2, 1)
        # the same square, at every coarsen-th pixel centre (the centres of coarsen x coarsen blocks)
        grid = F.affine_grid(theta, (canvas.shape[0], c, h // coarsen, w // coarsen), align_corners=False)
        return F.grid_sample(canvas, grid, align_corners=False, padding_mode="border")

    def _crop(self, canvas):
        _, h, w = self.image_shape
        top, left = (canvas.shape[-2] - h) // 2, (canvas.shape[-1] - w) // 2
        return canvas[..., top:top + h, left:left + w]


class SpatialDecoder(Decoder):
    """The article's spatial generator: an MLP of (rotated, shifted) pixel coordinates and the code.

    The first layer is split into a coordinate part and a code part, so the code's contribution
    is computed once per image instead of once per pixel.
    """

    def __init__(self, image_shape, code_dim, hidden=(96, 96, 96)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        self.register_buffer("grid", coordinate_grid(h, w), persistent=False)
        self.coord_in = nn.Linear(2, hidden[0])
        self.code_in = nn.Linear(code_dim, hidden[0], bias=False)
        self.body = _mlp([*hidden, c])

    def forward(self, code, angle=None, shift=None):
        batch = code.shape[0]
        if angle is None:
            angle = code.new_zeros(batch)
        affine = inverse_transform(angle, shift)  # (B, 2, 3)
        coords = self.grid @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]
        hidden = torch.tanh(self.coord_in(coords) + self.code_in(code)[:, None, :])
        c, h, w = self.image_shape
        return self.body(hidden).transpose(1, 2).reshape(batch, c, h, w)


class BroadcastDecoder(Decoder):
    """Spatial broadcast decoder: the code tiled over the rotated coordinate grid, then convolutions."""

    def __init__(self, image_shape, code_dim, channels=(64, 64, 64)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        self.register_buffer("grid", coordinate_grid(h, w), persistent=False)
        layers, in_c = [], code_dim + 2
        for out_c in channels:
            layers += [nn.Conv2d(in_c, out_c, 3, padding=1), nn.GELU()]
            in_c = out_c
        self.body = nn.Sequential(*layers, nn.Conv2d(in_c, c, 1))

    def forward(self, code, angle=None, shift=None):
        batch = code.shape[0]
        if angle is None:
            angle = code.new_zeros(batch)
        affine = inverse_transform(angle, shift)
        coords = self.grid @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]
        _, h, w = self.image_shape
        coords = coords.transpose(1, 2).reshape(batch, 2, h, w)
        tiled = code[:, :, None, None].expand(-1, -1, h, w)
        return self.body(torch.cat([tiled, coords], dim=1))


DECODERS = {"warp": WarpDecoder, "spatial": SpatialDecoder, "broadcast": BroadcastDecoder}
