"""The lattice seen in the data: its spacing and symmetry from power spectra, and a classical
orientation map (the local-FFT reference) to set beside the rVAE's.

Spacing and symmetry come from sampled tiles of the image: the first Bragg ring is the strongest
peak of the tiles' mean radial power spectrum (a smooth background removed), and the symmetry
the n in (6, 4, 2) whose angular harmonic dominates the power on that ring, tile by tile (so
grains of different orientations do not blur it). The orientation of one window is the phase of
that harmonic on the ring: ``arg(sum P(k) exp(i n phi_k)) / n``, with its confidence
``|sum P exp(i n phi)| / sum P`` (1 for perfect n-fold spots, 0 for none).
"""
import dask
import numpy as np
from scipy import ndimage

from .windows import fft_magnitude, tapered

SYMMETRIES = (6, 4, 2)
RING_CONTRAST = 3.0  # a Bragg ring's least height over the radial background
INNER_RING = 0.25  # an inner ring this high, relative to the strongest, is the lattice's period


def polar(size):
    """Radius and displayed angle (counter-clockwise, row 0 at the top) of each FFT pixel of a
    ``size`` x ``size`` window, DC at the centre."""
    k = np.arange(size) - size // 2
    ky, kx = np.meshgrid(k, k, indexing="ij")
    return np.hypot(ky, kx), np.arctan2(-ky, kx)


def power_spectra(windows):
    """Centred power spectra of Hann-windowed, mean-subtracted ``(N, h, w)`` windows."""
    return fft_magnitude(np.asarray(windows, dtype=np.float32)) ** 2


def half_polar(size):
    """:func:`polar` for the half-plane layout of ``rfft2`` (rows in FFT order, columns 0..size/2)."""
    ky = np.fft.fftfreq(size, 1 / size)[:, None]
    kx = np.arange(size // 2 + 1)[None, :]
    return np.broadcast_to(np.hypot(ky, kx), (size, size // 2 + 1)), np.broadcast_to(np.arctan2(-ky, kx),
                                                                                      (size, size // 2 + 1))


def half_power_spectra(windows):
    """Power spectra of Hann-windowed, mean-subtracted windows over half the frequency plane
    (``rfft2`` in single precision): for the even orders of a lattice's harmonics the other half
    repeats it, at a quarter of the cost of :func:`power_spectra`."""
    from scipy import fft

    windows = np.asarray(windows, dtype=np.float32)
    spectra = fft.rfft2(tapered(windows))
    power = spectra.real ** 2 + spectra.imag ** 2
    power[..., 0] *= 0.5  # the columns that are their own mirror count half: sums are half the full plane's
    if windows.shape[-1] % 2 == 0:
        power[..., -1] *= 0.5
    return power


def harmonics(spectra, ring, orders, width=0.25, layout=polar):
    """``sum P exp(i n phi)`` over the annulus ``ring * (1 +- width)`` for each order n, and
    ``sum P`` there: ``(N, len(orders))`` complex, ``(N,)``. ``layout``: :func:`polar` for
    centred full spectra, :func:`half_polar` for ``rfft2``'s."""
    radius, angle = layout(spectra.shape[-2])
    mask = (radius >= ring * (1 - width)) & (radius <= ring * (1 + width))
    power = spectra[:, mask]
    phases = np.exp(1j * np.outer(orders, angle[mask]))  # (orders, pixels)
    return power @ phases.T, power.sum(axis=1)


def sample_tiles(image, tile, count, seed=0):
    """``count`` tiles of ``image`` (2D, NumPy or Dask) at seeded random places."""
    rng = np.random.default_rng(seed)
    ny, nx = image.shape
    tile = min(tile, ny, nx)
    corners = zip(rng.integers(0, ny - tile + 1, count), rng.integers(0, nx - tile + 1, count))
    # one computation for all tiles: tiles sharing a chunk of a Dask image decode it once
    tiles = dask.compute(*[image[r:r + tile, c:c + tile] for r, c in corners])
    return np.stack(tiles).astype(np.float32)


class NoLattice(ValueError):
    """The image shows no lattice (no Bragg ring in its power spectrum)."""


def estimate_lattice(image, tile=128, count=16, seed=0):
    """``{"spacing": px, "ring": FFT px in a tile, "tile": px, "symmetry": n, "scores": {n: s}}``
    of a 2D image (channels already summed)."""
    tiles = sample_tiles(image, tile, count, seed)
    if not np.isfinite(tiles).all():
        raise ValueError("the image contains NaN or Inf values; clean or mask them before extracting patches")
    size = tiles.shape[-1]
    spectra = power_spectra(tiles)
    radius, _ = polar(size)
    bins = np.minimum(radius.round().astype(int), size // 2)
    profile = ndimage.mean(spectra.mean(axis=0), bins, index=np.arange(size // 2 + 1))
    # the ring stands out of a smooth background (the columns' own shape, slow intensity drifts)
    background = ndimage.minimum_filter1d(ndimage.uniform_filter1d(profile, 5), 9)
    excess = profile - background
    excess[:3] = 0  # DC and the slowest drifts
    peak = int(np.argmax(excess))
    # A Bragg ring stands many times over the background at its radius (14-250x on the real ADF and
    # ABF images and the demo); noise's strongest wiggle does not (0.3-1.8x for white and smoothed noise).
    contrast = float(excess[peak] / max(background[peak], 1e-30))
    if contrast < RING_CONTRAST:
        raise NoLattice(f"found no lattice in the image: the strongest ring of its power spectrum stands only "
                        f"{contrast:.1f}x over the background (a lattice's, {RING_CONTRAST:g}x or more); give --window")
    # The lattice's own period is the innermost ring that stands out, not always the strongest: a
    # perovskite's {110} and {200} rings outshine its {100} (SrTiO3 [001] in HAADF, 27% of the {110}'s).
    rings = [r for r in range(3, len(excess) - 1) if excess[r] >= max(excess[r - 1], excess[r + 1])
             and excess[r] >= INNER_RING * excess[peak] and excess[r] >= RING_CONTRAST * background[r]]
    # The strongest ring reads the orientation best: the classical reference measures it there (an
    # inner ring's few pixels in a window gave 18 deg on SrTiO3 [001] HAADF, the {110} ring 0.2 deg).
    ring, strongest = _subbin(excess, rings[0] if rings else peak), _subbin(excess, peak)
    if ring < 3:
        raise NoLattice("found no lattice in the image (no Bragg ring in its power spectrum); give --window")
    sums, total = harmonics(spectra, ring, SYMMETRIES)
    scores = dict(zip(SYMMETRIES, (np.abs(sums) / total[:, None]).mean(axis=0).round(3).tolist()))
    symmetry = next((n for n in SYMMETRIES if scores[n] >= 0.35 and scores[n] >= max(scores.values()) * 0.8), 1)
    return {"spacing": size / ring, "ring": ring, "tile": size, "symmetry": symmetry, "scores": scores,
            "contrast": round(contrast, 1), "orientation_spacing": size / strongest}


def _subbin(profile, peak):
    """A peak's position in ``profile`` to a fraction of a bin (a parabola through its neighbours)."""
    if 0 < peak < len(profile) - 1:
        a, b, c = profile[peak - 1:peak + 2]
        return peak + (0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0)
    return float(peak)


CELLS = 3.7  # window / spacing: 32 px on the demo's lattice; see docs/bench_accuracy.md


def window_for(spacing, cells=CELLS, lo=16, hi=128):
    """A window of about ``cells`` lattice spacings, a multiple of 4 px within ``[lo, hi]``."""
    return int(np.clip(4 * round(cells * spacing / 4), lo, hi))


def orientation(windows, spacing, symmetry, spectrum=False):
    """The local-FFT orientation (radians, counter-clockwise, in (-pi/n, pi/n]) and its confidence
    for ``(N, h, w)`` windows; ``spectrum``: they are already power (or log-power) spectra."""
    if spectrum:
        spectra, layout = np.asarray(windows, dtype=np.float32), polar
    else:
        spectra, layout = half_power_spectra(windows), half_polar
    ring = spectra.shape[-2] / spacing
    sums, total = harmonics(spectra, ring, (symmetry,), layout=layout)
    return np.angle(sums[:, 0]) / symmetry, np.abs(sums[:, 0]) / np.maximum(total, 1e-30)
