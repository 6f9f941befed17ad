"""A synthetic spectrum image with known per-pixel shifts and shapes, of any size.

Each scan position holds a spectrum of three parts: a plasmon-like peak whose width differs by
region, an ionisation edge (an arctan step with a white line) and a second peak whose height
differs by region, the whole spectrum shifted along energy by a known amount (a step per region,
as a chemical shift, plus a slow gradient across the scan, as the spectrometer's drift), with
Poisson counting noise at ``dose`` counts at the highest top.

What a shift is between spectra of different shapes is a convention: the shift that makes them
most alike (least squares, or the peak of their cross-correlation) is what both the classical
estimate and the shift-VAE's one frame use. Here shapes differ symmetrically about each
feature's position (a peak's width, a well separated peak's height), so that convention and the
generator's shift agree; a white line growing on one side of an edge would move the
best-matching shift by itself (by channels), and no estimate could then be scored against it.

Blocks are generated independently (each from its own seed), so a cube larger than memory is
written block by block (:func:`spectrum_image`, lazy).
"""
import dask.array as da
import numpy as np
import xarray as xr

from .synthetic import grain_angles, grain_seeds

# where the plasmon-like peak, the edge and the second peak sit (fractions of the axis), unshifted
PEAK, EDGE, SECOND = 0.25, 0.5, 0.78


def region_labels(rows, cols, seeds):
    """The region (nearest seed) of each position of the grid ``rows`` x ``cols`` (global indices)."""
    d2 = (rows[:, None, None] - seeds[:, 0]) ** 2 + (cols[None, :, None] - seeds[:, 1]) ** 2
    return d2.argmin(-1)


def spectra(channel, shift, width, height):
    """Noise-free spectra ``(..., E)``: ``channel`` ``(E,)`` indices; ``shift``, the plasmon-like
    peak's ``width`` and the second peak's ``height`` per position (channels; a fraction)."""
    e = channel - shift[..., None]
    n = len(channel)
    plasmon = 1.2 * np.exp(-0.5 * ((e - PEAK * n) / width[..., None]) ** 2)
    edge = 0.5 + np.arctan((e - EDGE * n) / 1.5) / np.pi
    white_line = 0.8 * np.exp(-0.5 * ((e - EDGE * n - 2.5) / 2.0) ** 2)
    second = height[..., None] * np.exp(-0.5 * ((e - SECOND * n) / 2.5) ** 2)
    return 0.1 + plasmon + edge + white_line + second


class ShiftedSpectra:
    """The truth of a synthetic spectrum image of ``size`` x ``size`` positions: regions, their
    shifts, peak widths (channels) and peak heights, and a gradient of ``drift`` channels across the scan."""

    def __init__(self, size=64, channels=128, regions=4, max_shift=6.0, drift=1.0, seed=0):
        rng = np.random.default_rng(seed)
        self.size, self.channels, self.drift, self.seed = size, channels, drift, seed
        # drawn as the synthetic lattice draws its grains: with its size, grains and seed, the regions
        # are the lattice image's grains (an image and a spectrum image of one scan, for im2spec)
        grain_angles(regions, 6, rng)
        self.seeds = grain_seeds(regions, size, rng)
        self.region_shift = rng.uniform(-max_shift, max_shift, regions)
        self.region_width = rng.permutation(np.linspace(2.5, 4.5, regions))
        self.region_height = rng.permutation(np.linspace(0.3, 1.5, regions))

    def truth(self, rows, cols):
        """``(region, shift, width, height)`` at the grid ``rows`` x ``cols``."""
        labels = region_labels(rows, cols, self.seeds)
        gradient = self.drift * (cols[None, :] / max(self.size - 1, 1) - 0.5) + 0 * rows[:, None]
        return labels, self.region_shift[labels] + gradient, self.region_width[labels], self.region_height[labels]

    def block(self, rows, cols, dose, block_id):
        """Counts (or, without ``dose``, the expected spectra) of one block, from its own seed."""
        _, shift, width, height = self.truth(rows, cols)
        expected = spectra(np.arange(self.channels, dtype=float), shift, width, height)
        if dose is None:
            return expected.astype(np.float32)
        rng = np.random.default_rng([self.seed, *block_id])
        top = 2.0 + self.region_height.max()  # about the highest top
        return rng.poisson(expected * (dose / top)).astype(np.float32)


def spectrum_image(*, size=64, channels=128, grains=4, dose=300.0, max_shift=6.0, drift=1.0, origin=270.0,
                   step=0.5, pixel_size=1.0, chunk=64, seed=0):
    """The synthetic spectrum image as a lazy Dataset: ``data`` ``(y, x, energy)`` in counts, the
    truth ``true_shift`` (the energy axis' units, positive towards higher energy), ``true_width``,
    ``true_height`` and ``region``: ``grains`` regions, ``step`` eV per channel from ``origin``, ``pixel_size`` nm per
    scan step, ``chunk`` positions per block side."""
    truth = ShiftedSpectra(size, channels, grains, max_shift, drift, seed)
    scan = da.zeros((size, size), chunks=chunk, dtype=np.float32)

    def located(block_info):
        (r0, r1), (c0, c1) = block_info[0]["array-location"][:2]
        return np.arange(r0, r1), np.arange(c0, c1)

    def counts(block, block_info=None):
        return truth.block(*located(block_info), dose, block_info[0]["chunk-location"][:2])

    def known(block, part, dtype, block_info=None):
        return truth.truth(*located(block_info))[part].astype(dtype)

    data = scan.map_blocks(counts, new_axis=2, chunks=(*scan.chunks, (channels,)), dtype=np.float32)
    labels, shift, width, height = (scan.map_blocks(known, part, dtype, dtype=dtype) for part, dtype in
                                    ((0, np.int16), (1, np.float32), (2, np.float32), (3, np.float32)))
    axis = np.arange(size)
    energy = origin + step * np.arange(channels)
    return xr.Dataset(
        {"data": (("y", "x", "energy"), data, {"units": "counts", "long_name": "EELS counts"}),
         "true_shift": (("y", "x"), shift * np.float32(step),
                        {"units": "eV", "long_name": "true shift along energy"}),
         "true_width": (("y", "x"), width * np.float32(step), {"units": "eV", "long_name": "plasmon-like peak width"}),
         "true_height": (("y", "x"), height, {"units": "1", "long_name": "second peak's height"}),
         "region": (("y", "x"), labels, {"long_name": "region index"})},
        coords={"y": ("y", axis * pixel_size, {"units": "nm", "long_name": "scan position y"}),
                "x": ("x", axis * pixel_size, {"units": "nm", "long_name": "scan position x"}),
                "energy": ("energy", energy, {"units": "eV", "long_name": "energy loss"})},
        attrs={"source": "rvae-hpc synthetic spectrum image", "dose": dose or 0.0, "seed": seed,
               "region_shift_eV": (truth.region_shift * step).round(4).tolist()})
