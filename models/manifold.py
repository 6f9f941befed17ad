"""Latent-space mosaics: decoded images on a grid that spans where the data actually encode."""
import numpy as np
import torch


def manifold2d(model, z, n=8, percentiles=(5, 95), y=None):
    """Decode an ``n x n`` grid over the first two content latents, at angle 0 and no shift.

    The grid spans the given ``percentiles`` of the encoded latents ``z`` (``(N, latent_dim)``),
    not a fixed N(0, 1) range: a trained posterior rarely fills the prior. Latents beyond the
    second sit at their median; ``y`` picks the class of a class-conditional model.
    Returns the mosaic ``(n*h, n*w)`` of the first channel (top row = high z1) and its extent
    ``(z0_lo, z0_hi, z1_lo, z1_hi)`` for ``imshow``.
    """
    z = np.asarray(z, dtype=np.float32)
    lo, hi = np.percentile(z, percentiles, axis=0)
    hi = np.maximum(hi, lo + 1e-3)  # a collapsed latent (every window alike) still gets a drawable range
    codes = np.tile(np.median(z, axis=0), (n * n, 1)).astype(np.float32)
    z0, z1 = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(hi[-1], lo[-1], n))
    codes[:, 0] = z0.ravel()
    if z.shape[1] > 1:
        codes[:, 1] = z1.ravel()
    labels = None if y is None else torch.full((n * n,), int(y))
    images = model.decode(torch.from_numpy(codes), angle=torch.zeros(n * n) if model.rotation else None,
                          y=labels).numpy()[:, 0]
    h, w = images.shape[1:]
    mosaic = images.reshape(n, n, h, w).transpose(0, 2, 1, 3).reshape(n * h, n * w)
    extent = (lo[0], hi[0], lo[-1] if z.shape[1] > 1 else 0.0, hi[-1] if z.shape[1] > 1 else 1.0)
    return mosaic, extent
