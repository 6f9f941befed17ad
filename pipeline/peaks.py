"""Atom-column finder: local maxima of a smoothed image, tile by tile with Dask, sub-pixel refined."""
import dask
import numpy as np
from scipy import ndimage


def find_atom_columns(image, *, min_distance=3, threshold=0.3, tile=512, intensity_range=None):
    """Sub-pixel (row, col) positions of atom columns in a 2D Dask array.

    A column is a local maximum of the Gaussian-smoothed image within ``min_distance`` pixels
    whose value exceeds ``min + threshold * (max - min)``. Tiles overlap by a halo so that
    maxima near tile edges are found exactly once.
    """
    lo, hi = intensity_range if intensity_range is not None else dask.compute(image.min(), image.max())
    level = float(lo) + threshold * (float(hi) - float(lo))
    halo = min_distance + 3
    ny, nx = image.shape
    tasks = []
    for r0 in range(0, ny, tile):
        for c0 in range(0, nx, tile):
            r1, c1 = min(r0 + tile, ny), min(c0 + tile, nx)
            outer = (max(r0 - halo, 0), min(r1 + halo, ny), max(c0 - halo, 0), min(c1 + halo, nx))
            region = image[outer[0]:outer[1], outer[2]:outer[3]]
            tasks.append(dask.delayed(_peaks_in_tile)(region, outer, (r0, r1, c0, c1), level, min_distance))
    found = dask.compute(*tasks)
    return np.concatenate(found) if found else np.empty((0, 2))


def _peaks_in_tile(region, outer, core, level, min_distance):
    smooth = ndimage.gaussian_filter(np.asarray(region, dtype=np.float64), 1.0)
    peak = (smooth == ndimage.maximum_filter(smooth, size=2 * min_distance + 1)) & (smooth > level)
    # never at the region's own border: the 3x3 refinement needs neighbours
    peak[[0, -1], :] = peak[:, [0, -1]] = False
    rows, cols = np.nonzero(peak)
    gr, gc = rows + outer[0], cols + outer[2]
    keep = (gr >= core[0]) & (gr < core[1]) & (gc >= core[2]) & (gc < core[3])
    rows, cols = rows[keep], cols[keep]
    dy = _vertex(smooth[rows - 1, cols], smooth[rows, cols], smooth[rows + 1, cols])
    dx = _vertex(smooth[rows, cols - 1], smooth[rows, cols], smooth[rows, cols + 1])
    return np.stack([rows + outer[0] + dy, cols + outer[2] + dx], -1)


def _vertex(before, at, after):
    """Offset of a parabola's vertex through three equally spaced samples, within +-0.5."""
    curvature = before - 2 * at + after
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (before - after) / curvature, 0.0)
    return np.clip(offset, -0.5, 0.5)
