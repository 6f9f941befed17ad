"""Semi-amortized angle refinement: each window's angle re-fitted against the trained decoder.

The encoder's angle is an amortized guess, one network for all windows; on a few hundred windows
of a real image it can be degrees off while the decoder has learned the lattice well. For each
window, :func:`refine_angles` keeps the encoder's content latents and searches the angle that
makes the decoder's image likeliest, coarse to fine over one period of the lattice's symmetry
about the encoder's angle, then a parabola through the best step and its neighbours.

Only the window's inscribed disc is scored: turning the decoder's image brings its canvas corners
into the window's corners, parts that training at other angles rarely saw, and they bias the
search towards the angles the training windows had (docs/bench_accuracy.md: 0.45 deg error over
the whole window, 0.04 deg over the disc, on the real ADF image).
"""
import math

import torch

from .decoders import coarsened

# Search steps: every 3 deg over the period, on images coarsened 2x per side (a lattice window's
# likelihood peak is ~15 deg wide at a few unit cells), then every 0.25 deg within +-0.75 deg of the
# coarse parabola's vertex at full resolution: 21-31 renders at a quarter of the cost, then 7.
COARSE, FINE, FINE_SPAN = math.radians(3.0), math.radians(0.25), math.radians(0.75)
MAX_HALF_SPAN = math.radians(45.0)  # no lattice (n = 1, 2): a search of +-45 deg about the encoder's angle


def inscribed_disc(height, width, device=None):
    """1 inside the disc inscribed in a ``height`` x ``width`` window, 0 outside."""
    y = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    x = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    return ((y[:, None] / height) ** 2 + (x[None, :] / width) ** 2 <= 0.25).float()


@torch.no_grad()
def refine_angles(model, x, encoded, symmetry=1, y=None):
    """The angle (radians, ``(B,)``) of each window ``x`` ``(B, C, H, W)`` that maximises the
    decoder's likelihood of its inscribed disc, the content latents (and shift) held at
    ``encoded`` (the encoder's posterior mean, ``[angle, shift?, z...]``).

    ``symmetry``: the lattice's n; the search spans one period ``(-pi/n, pi/n]`` about the
    encoder's angle (at most +-45 deg)."""
    if not model.rotation:
        raise ValueError("this model has no angle latent to refine")
    parts = model._split(encoded, encoded)
    start, shift = parts["angle"][0], parts["shift"][0] if model.translation else None
    if model.infers_class and y is None:
        y = model.classify(x).argmax(-1)
    render = model.decoder.renderer(model._code(parts["z"][0], y))
    h, w = x.shape[-2:]
    coarse = 2 if h % 2 == 0 and w % 2 == 0 and min(h, w) >= 16 else 1
    targets = {1: x, coarse: coarsened(x, coarse)}
    discs = {k: inscribed_disc(*target.shape[-2:], device=x.device) for k, target in targets.items()}

    def log_likelihood(angle, coarsen=1):
        out = render(angle, shift, coarsen)
        return (model._likelihood(out).base_dist.log_prob(targets[coarsen]) * discs[coarsen]).sum((1, 2, 3))

    half = min(math.pi / symmetry, MAX_HALF_SPAN)
    angle = _search(lambda a: log_likelihood(a, coarse), start, half, COARSE)
    return _search(log_likelihood, angle, FINE_SPAN, FINE)


def _search(score, centre, half, step):
    """The best of the angles ``centre + k step`` within ``+-half``, refined by a parabola through
    its neighbours' scores (``score``: ``(B,)`` angles to ``(B,)`` log-likelihoods)."""
    offsets = torch.arange(-half, half + step / 2, step, device=centre.device, dtype=centre.dtype)
    scores = torch.stack([score(centre + offset) for offset in offsets], dim=1)  # (B, K)
    best = scores.argmax(dim=1).clamp(1, len(offsets) - 2)
    below, at, above = (scores.gather(1, (best + d)[:, None])[:, 0] for d in (-1, 0, 1))
    curvature = below - 2 * at + above
    vertex = torch.where(curvature < 0, 0.5 * (below - above) / curvature.clamp(max=-1e-12), torch.zeros_like(at))
    return centre + offsets[best] + vertex.clamp(-1, 1) * step
