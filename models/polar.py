"""Rotation as a shift: images sampled on polar coordinates over their inscribed disc, where turning
an image by an angle shifts its samples along the angle axis, so one FFT scores every angle at once.

For a Bernoulli decoder with logits ``L`` the disc's log-likelihood of a window ``x`` under the
decoder's image turned by ``theta`` is ``sum x L_theta + sum log(1 - sigmoid(L_theta))``; the second
sum is the same at every angle (the disc turns into itself), so the likeliest angle maximises the
correlation of ``x`` with ``L`` turned; for a Gaussian one, the correlation with the mean. On the polar
grid that correlation is a circular cross-correlation along the angle axis, weighted by the radius
(the disc's area element): :func:`rotation_scores`.

Angles follow :mod:`models.geometry`: counter-clockwise as displayed, row 0 at the top.
"""
import math

import torch
from torch.nn import functional as F


def polar_size(height, width):
    """``(rings, angles)`` for a window: a ring every 2 px out to the inscribed radius, and about an
    angle step per 1.2 px of the outermost ring's circumference (12 times a power of two, so that
    turns by 360/n degrees are whole steps for n = 2, 3, 4, 6). The scores between the steps come
    from the correlation's own spectrum (:func:`rotation_scores`), not from more samples."""
    radius = min(height, width) / 2
    return max(2, round(radius / 2)), 12 * max(4, 2 ** math.ceil(math.log2(2 * math.pi * radius / 1.2 / 12)))


def polar_grid(height, width, rings, angles, device=None):
    """``(rings, angles, 2)`` sampling points ``(x, y_down)`` in the window's ``[-1, 1]`` coordinates
    (``affine_grid``'s, ``align_corners=False``), and each ring's radius in pixels ``(rings,)``."""
    radius = min(height, width) / 2
    r = (torch.arange(rings, dtype=torch.float32, device=device) + 0.5) * radius / rings
    phi = torch.arange(angles, dtype=torch.float32, device=device) * (2 * math.pi / angles)
    x = r[:, None] * torch.cos(phi)[None, :] / (width / 2)
    y = -r[:, None] * torch.sin(phi)[None, :] / (height / 2)  # counter-clockwise as displayed: y up
    return torch.stack([x, y], dim=-1), r


def sample_polar(images, grid, scale=1.0):
    """``images`` ``(B, C, H, W)`` at the polar ``grid`` (window coordinates times ``scale``, to sample
    a larger canvas): ``(B, C, rings, angles)``."""
    points = (grid * scale).expand(images.shape[0], *grid.shape)
    return F.grid_sample(images, points, mode="bilinear", padding_mode="border", align_corners=False)


def spectrum(polar):
    """The Fourier transform along the angle axis of polar samples (what :func:`rotation_scores` takes)."""
    return torch.fft.rfft(polar, dim=-1)


def rotation_scores(data, template, weights=None, upsample=4):
    """``(B, upsample * angles)``: for each turn of ``k / upsample`` steps, ``sum_r weights_r sum_phi
    data(r, phi) template(r, phi - k)`` (the template turned counter-clockwise), summed over
    channels. ``data`` and ``template`` are polar samples ``(B, C, rings, angles)`` or their
    :func:`spectrum`; ``weights`` (per ring) multiply the real ``data`` before its transform (give
    None where one of the two was weighted already). The sum over rings and channels is taken
    before one inverse transform per image, whose zero-padding evaluates the band-limited
    correlation between the steps exactly."""
    if weights is not None:
        data = data * weights[:, None]
    data, template = (x if x.is_complex() else spectrum(x) for x in (data, template))
    product = (data * template.conj()).sum(dim=(1, 2))  # (B, frequencies)
    return torch.fft.irfft(product, n=2 * (product.shape[-1] - 1) * upsample, dim=-1) * upsample


def best_angle(scores, centre=None, half=math.pi):
    """The angle (radians, ``(B,)``) of each row's highest score within ``+-half`` of ``centre``
    (anywhere for ``half = pi``), refined by a parabola through its neighbours."""
    steps = scores.shape[1]
    step = 2 * math.pi / steps
    if centre is not None and half < math.pi:  # the steps within the span, gathered about the centre
        reach = int(half / step)
        index = (torch.round(centre / step).long()[:, None]
                 + torch.arange(-reach, reach + 1, device=scores.device)[None, :]) % steps
        best = index.gather(1, scores.gather(1, index).argmax(dim=1, keepdim=True))[:, 0]
    else:
        best = scores.argmax(dim=1)
    below, at, above = (scores.gather(1, ((best + d) % steps)[:, None])[:, 0] for d in (-1, 0, 1))
    curvature = below - 2 * at + above
    vertex = torch.where(curvature < 0, 0.5 * (below - above) / curvature.clamp(max=-1e-12), torch.zeros_like(at))
    angle = (best.to(scores.dtype) + vertex.clamp(-1, 1)) * step
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def rotational_symmetry(template, weights, orders=(6, 4, 3, 2), threshold=0.6):
    """The highest n in ``orders`` for which the polar ``template`` ``(C, rings, angles)`` correlates
    with itself turned by 360/n degrees at least ``threshold`` times as well as unturned (1 if none):
    the rotational symmetry the image has in real space (a power spectrum's is always even). Decoded
    images of lattices read 0.76-0.9 at their symmetry's turns, and 0.3 at most at others (the
    benchmark's crystals); 0.6 lies between."""
    centred = template - template.mean(dim=-1, keepdim=True)  # each ring's mean carries no angle
    scores = rotation_scores(centred[None], centred[None], weights)[0]
    steps = scores.shape[0]
    for n in sorted(orders, reverse=True):
        if steps % n == 0 and scores[steps // n] >= threshold * scores[0]:
            return n
    return 1
