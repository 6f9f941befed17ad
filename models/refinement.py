"""Semi-amortized angles: each window's angle re-fitted against the trained decoder, in one frame.

The encoder's angle is an amortized guess, one network for all windows; on a few hundred windows
of a real image it can be degrees off while the decoder has learned the lattice well.
:class:`AngleSearch` keeps the encoder's content latents and finds the angle that makes the
decoder's image likeliest over the window's inscribed disc, every angle at once: window and
decoded image on polar coordinates, one circular cross-correlation along the angle (an FFT), the
best step within one symmetry period of the encoder's angle, then a parabola
(:mod:`models.polar`). Only the disc is scored: it turns into itself, while a turned square brings
the decoder's canvas corners into the window's corners, which training at other angles rarely saw.

**One frame.** That angle is relative to the decoder's image at the window's own code, and that
image may itself be turned for another code (issue 26: one grain of four was 23 degrees off). The
search therefore also measures how the decoded image of each code is turned against one reference
image (the decoder's image at a reference code, e.g. the median of the training windows' codes),
the same correlation between two decoded images, and adds it: every angle is then relative to the
same image. The offset is returned too, so results can show it.
"""
import math

import torch

from .polar import best_angle, polar_grid, polar_size, rotation_scores, rotational_symmetry, sample_polar, spectrum

MAX_HALF_SPAN = math.radians(45.0)  # no symmetry (n = 1): a search of +-45 deg about the encoder's angle


class AngleSearch:
    """The polar grid of a model's windows and its reference image; see the module docstring.

    ``reference``: a code ``(latent_dim,)`` (class one-hot included for class-conditional models)
    whose decoded image defines angle 0 for every window, or None (each window's own frame)."""

    def __init__(self, model, reference=None, device=None):
        self.model = model
        _, h, w = model.image_shape
        self.grid, self.weights = polar_grid(h, w, *polar_size(h, w), device=device)
        self.reference = None
        if reference is not None:
            code = torch.as_tensor(reference, dtype=torch.float32, device=device)[None]
            self.reference = _centred(model.decoder.polar(code, self.grid))
            self.weighted_reference = spectrum(self.reference * self.weights[:, None])

    def symmetry(self):
        """The rotational symmetry of the reference image in real space (:func:`rotational_symmetry`)."""
        if self.reference is None:
            raise ValueError("no reference image: give a reference code")
        return rotational_symmetry(self.reference[0], self.weights)

    @torch.no_grad()
    def refine(self, x, encoded, symmetry=1, y=None, rendering=None):
        """``(angle, offset)`` (radians, ``(B,)`` each) of windows ``x`` ``(B, C, H, W)``: the angle
        that maximises the decoder's likelihood of each window's inscribed disc with the content
        latents (and shift) held at ``encoded`` (the encoder's posterior mean, ``[angle, shift?,
        z...]``), searched over the whole circle for a symmetric lattice (``symmetry`` > 1; its
        equivalent turns score alike) and within +-45 deg of the encoder's angle otherwise, plus
        the offset of that code's image against the reference image (0 without one).
        ``rendering``: :meth:`~models.rvae.RVAE.renderer` of those latents, if the caller has it."""
        model = self.model
        if not model.rotation:
            raise ValueError("this model has no angle latent to refine")
        parts = model._split(encoded, encoded)
        start = parts["angle"][0]
        if model.infers_class and y is None:
            y = model.classify(x).argmax(-1)
        rendering = rendering or model.renderer(parts["z"][0], y)
        template = spectrum(rendering.polar(self.grid))
        grid = self.grid
        if model.translation:  # polar samples of the window about the shifted centre
            grid = grid + parts["shift"][0].flip(-1)[:, None, None, :]
            data = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                                   align_corners=False)
        else:
            data = sample_polar(x, grid)
        # every angle is scored at once: a lattice's best turn is searched over the whole circle
        # (its equivalent turns score alike); without a symmetry, near the encoder's angle
        half = math.pi if symmetry > 1 else MAX_HALF_SPAN
        angle = best_angle(rotation_scores(data, template, self.weights), start, half)
        if self.reference is None:
            return angle, torch.zeros_like(angle)
        centred = template.clone()
        centred[..., 0] = 0  # each ring less its mean: what carries no angle does not score
        offset = best_angle(rotation_scores(centred, self.weighted_reference))
        return angle + offset, offset


def _centred(polar):
    """Each ring less its mean: what carries no angle does not score."""
    return polar - polar.mean(dim=-1, keepdim=True)


@torch.no_grad()
def refine_angles(model, x, encoded, symmetry=1, y=None):
    """The refined angle of each window in its own code's frame (:meth:`AngleSearch.refine`, no reference)."""
    return AngleSearch(model, device=x.device).refine(x, encoded, symmetry, y)[0]
