"""Detector-like sources for the benchmarks, written without ever holding the whole source."""
import numpy as np


def fill_with_counts(data, rows, seed=0):
    """Fill ``data`` (a memory map or an HDF5 dataset, scan rows first) with Poisson(200) counts:
    one band of ``rows`` scan rows, rolled along the last axis for each band it fills, so the codec
    still sees a realistic entropy."""
    band = np.random.default_rng(seed).poisson(200, size=(rows, *data.shape[1:])).astype(np.uint16)
    for start in range(0, data.shape[0], rows):
        n = min(rows, data.shape[0] - start)
        data[start:start + n] = np.roll(band[:n], start, axis=-1)
