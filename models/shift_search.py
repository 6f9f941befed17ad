"""Semi-amortized shifts: each spectrum's shift re-fitted against the trained decoder, in one frame.

The 1-D counterpart of :mod:`models.refinement`. The encoder's shift is an amortized guess; the
decoder's spectrum at the sample's own code, moved along energy, scores every shift near it
directly: a coarse then a fine grid of candidate shifts (each a resampling of one decoded
spectrum for the ``warp`` decoder), the likeliest under the model's own likelihood (least
squares for a Gaussian one, the Poisson deviance for counts), then a parabola through the best
three. **One frame**: the spectrum decoded at each code may itself sit shifted against
another code's (the decoder is free to place a shape anywhere), so the same search measures each
code's spectrum against one reference spectrum (the decoder's at a reference code) and adds it.
"""
import torch

# (half-width, step) of each pass, in channels: the encoder's shift is trusted to +-6 channels
PASSES = ((6.0, 1.0), (1.0, 0.25))


def squared_difference(render, target):
    """Per spectrum: the sum of squared differences between ``render`` and ``target`` ``(B, C, 1, E)``."""
    return ((render - target) ** 2).flatten(1).sum(1)


def best_shift(target, render, start, channels, score=squared_difference, passes=PASSES):
    """The shift (half-spectra, ``(B,)``) near ``start`` at which ``render(shift)`` ``(B, C, 1, E)``
    best matches ``target`` (the least ``score(rendered, target)``, per spectrum), to a fraction of
    the last pass's step."""
    unit = 2.0 / channels  # one channel in half-spectra
    shift = start
    for half_width, step in passes:
        offsets = torch.arange(-half_width, half_width + step / 2, step, device=target.device) * unit
        candidates = shift[:, None] + offsets[None]
        errors = torch.stack([score(render(candidates[:, k]), target) for k in range(len(offsets))], 1)
        best = errors.argmin(1).clamp(1, len(offsets) - 2)
        shift = candidates.gather(1, best[:, None])[:, 0]
    below, at, above = (errors.gather(1, (best + k)[:, None])[:, 0] for k in (-1, 0, 1))
    curvature = below - 2 * at + above
    vertex = torch.where(curvature > 0, 0.5 * (below - above) / curvature.clamp_min(1e-12), torch.zeros_like(at))
    return shift + vertex.clamp(-1, 1) * passes[-1][1] * unit


class ShiftSearch:
    """The refined shift of a :class:`~models.spectral.SpectrumVAE`'s spectra, in the frame of
    the decoder's spectrum at ``reference`` (a code ``(latent_dim,)``; None: each code's own)."""

    def __init__(self, model, reference=None, device=None):
        self.model = model
        self.reference = None
        if reference is not None:
            code = torch.as_tensor(reference, dtype=torch.float32, device=device)[None]
            self.reference = model.renderer(code)

    @torch.no_grad()
    def refine(self, x, encoded, rendering=None):
        """``(shift, offset)`` (half-spectra, ``(B,)`` each) of spectra ``x`` with the shape latents
        held at ``encoded`` (the encoder's posterior mean ``[shift, z...]``): the shift in the
        reference's frame, and the offset of the code's spectrum against the reference included in it."""
        model = self.model
        parts = model._split(encoded, encoded)
        rendering = rendering or model.renderer(parts["z"][0])
        channels = model.channels
        shift = best_shift(x, rendering, parts["shift"][0], channels, score=model.negative_log_likelihood)
        if self.reference is None:
            return shift, torch.zeros_like(shift)
        own = model.mean_image(rendering(torch.zeros_like(shift)))
        reference = self.reference
        offset = best_shift(own, lambda s: model.mean_image(reference(s)), torch.zeros_like(shift), channels)
        return shift + offset, offset
