"""Coordinate grids and the in-plane rotation convention shared by every decoder.

Convention: images are displayed with row 0 at the top (matplotlib's ``origin="upper"``).
A positive ``angle`` (radians) rotates the decoded content **counter-clockwise as displayed**;
``shift = (dy, dx)`` moves it by ``dy`` rows down and ``dx`` columns right, both in units of
half the image size (the ``[-1, 1]`` normalised coordinates of ``affine_grid``).
"""
import math

import torch


def coordinate_grid(height, width):
    """Pixel-centre coordinates ``(x, y_down)`` in ``[-1, 1]``, shape ``(height * width, 2)``.

    Matches ``torch.nn.functional.affine_grid(..., align_corners=False)``.
    """
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def inverse_transform(angle, shift=None, scale=1.0):
    """Affine matrices ``(B, 2, 3)`` mapping output coordinates to source coordinates.

    The output shows the source rotated counter-clockwise (as displayed) by ``angle`` and then
    moved by ``shift``; so a point ``p`` of the output samples the source at ``R(angle)^-1 (p - t)``.
    In ``(x, y_down)`` coordinates ``R(angle)^-1 = [[cos, -sin], [sin, cos]]``. ``scale`` multiplies
    the result, to sample a larger canvas (``window / canvas``).
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    if shift is None:
        offset = torch.zeros(angle.shape + (2,), dtype=angle.dtype, device=angle.device)
    else:
        t = shift.flip(-1)  # (dy, dx) -> (x, y_down)
        offset = -(rot @ t.unsqueeze(-1)).squeeze(-1)
    return scale * torch.cat([rot, offset.unsqueeze(-1)], dim=-1)


def canvas_size(size):
    """Smallest canvas side >= sqrt(2) * size with the parity of ``size``: a rotated window fits."""
    side = math.ceil(math.sqrt(2) * size)
    return side + (side - size) % 2


def inscribed_disc(height, width, device=None):
    """1 inside the disc inscribed in a ``height`` x ``width`` window, 0 outside."""
    y = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    x = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    return ((y[:, None] / height) ** 2 + (x[None, :] / width) ** 2 <= 0.25).float()


def affine_points(theta, height, width):
    """``F.affine_grid(theta, (B, C, height, width), align_corners=False)``, as one batched matrix
    product with the pixel-centre grid (torch's CPU affine_grid costs ~4x more)."""
    base = torch.cat([coordinate_grid(height, width), torch.ones(height * width, 1)], dim=1).to(theta)
    return torch.matmul(base, theta.transpose(1, 2)).view(theta.shape[0], height, width, 2)


def upright(images, angle, shift=None):
    """``images`` ``(B, C, H, W)`` turned back by ``angle`` (and moved back by ``shift``): the content
    an image shows turned by ``angle`` and moved by ``shift`` (:func:`inverse_transform`), seen as it
    was before; pixels from outside the image repeat its border."""
    import torch.nn.functional as F

    forward = inverse_transform(-angle)  # R(angle) itself: a point p of the result samples R p + t
    if shift is not None:
        forward = torch.cat([forward[:, :, :2], shift.flip(-1).unsqueeze(-1)], dim=-1)
    grid = affine_points(forward, *images.shape[-2:])
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
