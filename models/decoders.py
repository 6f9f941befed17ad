"""Decoders: a latent code plus an angle (and optional shift) to an image ``(B, C, H, W)``.

All three rotate by the same convention (:mod:`models.geometry`) and return unconstrained
values (logits for a Bernoulli likelihood, means for a Gaussian one). ``renderer(code)`` gives
the images of codes at any angle and on a polar grid (:class:`Rendering`): what an angle search
asks of a decoder, the warp decoder decoding its canvas once for both.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .geometry import affine_points, canvas_size, coordinate_grid, inverse_transform
from .polar import sample_polar


def _mlp(sizes, activation=nn.Tanh):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


class Rendering:
    """The images of some codes at any angle and shift (``rendering(angle, shift=None)``) and on
    a polar grid at angle 0 (``rendering.polar(grid)``), what an angle search asks of a decoder."""

    def __init__(self, render, polar):
        self._render, self.polar = render, polar

    def __call__(self, angle=None, shift=None):
        return self._render(angle, shift)


class Decoder(nn.Module):
    def renderer(self, code):
        """The :class:`Rendering` of these codes (here decoded afresh for each call)."""
        return Rendering(lambda angle, shift: self(code, angle, shift), lambda grid: self.polar(code, grid))

    def polar(self, code, grid):
        """The decoded images of these codes at angle 0 on a polar ``grid`` (:mod:`models.polar`):
        ``(B, C, rings, angles)``; here sampled from the rendered window."""
        return sample_polar(self(code), grid)


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

    def polar(self, code, grid):
        """The canvas of these codes sampled on a polar ``grid`` of the window (no crop, no turn)."""
        return self._polar(self.net(code).view(-1, *self.canvas), grid)

    def renderer(self, code):
        """The :class:`Rendering` of these codes: the canvas is decoded once, then only sampled."""
        canvas = self.net(code).view(-1, *self.canvas)
        return Rendering(lambda angle, shift: self._place(canvas, angle, shift), lambda grid: self._polar(canvas, grid))

    def _polar(self, canvas, grid):
        _, h, w = self.image_shape
        scale = torch.tensor([w / self.canvas[2], h / self.canvas[1]], device=grid.device)
        return sample_polar(canvas, grid, scale)

    def _place(self, canvas, angle, shift):
        if angle is None and shift is None:
            return self._crop(canvas)
        if angle is None:
            angle = canvas.new_zeros(canvas.shape[0])
        c, h, w = self.image_shape
        scale = torch.tensor([w / self.canvas[2], h / self.canvas[1]], device=canvas.device)
        theta = inverse_transform(angle, shift) * scale.view(1, 2, 1)
        grid = affine_points(theta, h, w)
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

    def polar(self, code, grid):
        """The generator evaluated at the polar ``grid``'s points themselves: exact, no resampling."""
        rings, angles = grid.shape[:2]
        hidden = torch.tanh(self.coord_in(grid.reshape(-1, 2))[None] + self.code_in(code)[:, None, :])
        return self.body(hidden).transpose(1, 2).reshape(code.shape[0], -1, rings, angles)


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
