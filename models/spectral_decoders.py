"""1-D decoders: a latent code plus a shift along the energy axis to spectra ``(B, C, 1, E)``.

The analogues of :mod:`models.decoders` for spectra. A spectrum's channels sit at coordinates
``t`` in ``(-1, 1)``; a shift ``s`` (in half-spectra) moves the canonical spectrum ``f`` to
``f(t - s)``: a peak at ``t0`` appears at ``t0 + s``. All return unconstrained values (the
model maps them onto the data scale for its likelihood).
"""
import torch
from torch import nn
from torch.nn import functional as F

from .decoders import _mlp


def channel_coordinates(channels):
    """Channel centres on ``(-1, 1)``: ``(channels,)``."""
    return (torch.arange(channels, dtype=torch.float32) * 2 + 1) / channels - 1


def shifted_coordinates(grid, shift, batch):
    """``(B, E)`` coordinates ``t - s`` at which the canonical spectrum is read (``shift``: (B,) or None)."""
    if shift is None:
        return grid.expand(batch, -1)
    return grid[None] - shift[:, None]


class SpectralDecoder(nn.Module):
    def renderer(self, code):
        """A function of the shift ``(B,)`` (or None: unshifted) giving the decoder's output at
        ``code`` (one code, or ``B``): decoded afresh for each call here."""
        return lambda shift: self(code if shift is None else code.expand(len(shift), -1), shift)


class ResampleDecoder(SpectralDecoder):
    """A canonical spectrum decoded once per sample on a canvas wider than the range (by
    ``margin`` half-spectra each side), shifted by linear resampling and cropped to the range:
    one MLP call per spectrum, the 1-D ``warp``."""

    def __init__(self, image_shape, code_dim, hidden=(256, 256), margin=0.5):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, _, e = self.image_shape
        self.half = 1.0 + margin  # the canvas spans (-half, half)
        self.canvas = (c, int(round(e * self.half)))
        self.register_buffer("grid", channel_coordinates(e), persistent=False)
        self.net = _mlp([code_dim, *hidden, c * self.canvas[1]])

    def forward(self, code, shift=None):
        return self._place(self.net(code).view(-1, self.canvas[0], 1, self.canvas[1]), shift)

    def renderer(self, code):
        """The canvas decoded once, then only resampled for each shift."""
        canvas = self.net(code).view(-1, self.canvas[0], 1, self.canvas[1])
        return lambda shift: self._place(canvas if shift is None else canvas.expand(len(shift), -1, -1, -1), shift)

    def _place(self, canvas, shift):
        where = shifted_coordinates(self.grid, shift, canvas.shape[0]) / self.half  # on the canvas' (-1, 1)
        points = torch.stack([where, torch.zeros_like(where)], -1)[:, None]  # (B, 1, E, 2) as (x, y)
        return F.grid_sample(canvas, points, align_corners=False, padding_mode="border")


class SpatialDecoder1D(SpectralDecoder):
    """The spatial generator over energy: an MLP of the (shifted) channel coordinate and the code,
    its first layer split so the code's part is computed once per spectrum."""

    def __init__(self, image_shape, code_dim, hidden=(96, 96, 96)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, _, e = self.image_shape
        self.register_buffer("grid", channel_coordinates(e), persistent=False)
        self.coord_in = nn.Linear(1, hidden[0])
        self.code_in = nn.Linear(code_dim, hidden[0], bias=False)
        self.body = _mlp([*hidden, c])

    def forward(self, code, shift=None):
        where = shifted_coordinates(self.grid, shift, code.shape[0])
        hidden = torch.tanh(self.coord_in(where[..., None]) + self.code_in(code)[:, None, :])
        return self.body(hidden).transpose(1, 2)[:, :, None, :]  # (B, C, 1, E)


class BroadcastDecoder1D(SpectralDecoder):
    """Spatial broadcast over energy: the code tiled along the (shifted) coordinate, then 1-D convolutions."""

    def __init__(self, image_shape, code_dim, channels=(64, 64, 64)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, _, e = self.image_shape
        self.register_buffer("grid", channel_coordinates(e), persistent=False)
        layers, in_c = [], code_dim + 1
        for out_c in channels:
            layers += [nn.Conv1d(in_c, out_c, 5, padding=2), nn.GELU()]
            in_c = out_c
        self.body = nn.Sequential(*layers, nn.Conv1d(in_c, c, 1))

    def forward(self, code, shift=None):
        where = shifted_coordinates(self.grid, shift, code.shape[0])
        tiled = code[:, :, None].expand(-1, -1, where.shape[1])
        return self.body(torch.cat([tiled, where[:, None]], dim=1))[:, :, None, :]


SPECTRAL_DECODERS = {"warp": ResampleDecoder, "spatial": SpatialDecoder1D, "broadcast": BroadcastDecoder1D}
