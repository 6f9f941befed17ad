"""The lattice read from the data (spacing, symmetry) and the classical local-FFT orientation."""

import numpy as np
import pytest

from pipeline.lattice import estimate_lattice, orientation, window_for
from pipeline.synthetic import lattice_grains


def test_spacing_and_symmetry_of_the_synthetic_lattice():
    found = estimate_lattice(lattice_grains(size=384, spacing=10.0, seed=0)["data"].values)
    assert found["spacing"] == pytest.approx(10 * np.sqrt(3) / 2, rel=0.02)  # the hexagonal planes' spacing
    assert found["symmetry"] == 6
    assert window_for(found["spacing"]) == 32  # the window the demo was tuned with


@pytest.mark.parametrize("degrees", [-20.0, 3.0, 17.5])
def test_local_fft_orientation_reads_a_known_rotation_counter_clockwise(degrees):
    from scipy import ndimage

    image = lattice_grains(size=192, grains=1, seed=3)["data"].values
    rotated = ndimage.rotate(image, degrees, reshape=False, order=3)  # counter-clockwise as displayed
    windows = np.stack([image[64:128, 64:128], rotated[64:128, 64:128]])
    angle, confidence = orientation(windows, 10 * np.sqrt(3) / 2, 6)
    step = np.degrees(np.angle(np.exp(1j * 6 * (angle[1] - angle[0]))) / 6)
    assert step == pytest.approx(degrees, abs=0.5) and confidence.min() > 0.3


def test_the_real_adf_image_shows_its_lattice(real_file):
    from rsciio.hspy import file_reader

    path = real_file("test_ADF_cropped.hdf5")
    image = file_reader(str(path))[0]["data"].astype(np.float32)
    found = estimate_lattice(image)
    # columns about 30 px apart (by eye: rows ~33 px, bright columns ~40 px apart along a row)
    assert 25 < found["spacing"] < 36 and found["symmetry"] in (2, 4), found


def test_the_period_is_the_innermost_ring_and_the_orientation_is_read_on_the_strongest():
    """A perovskite [001]-like square lattice: A columns at the cell's corners, B
    columns at its centre, so the {110} ring outshines the {100} (the lattice's period)."""
    from scipy import ndimage

    period, size = 20.0, 384
    rows, cols = np.mgrid[0:size // period, 0:size // period] * period
    image = np.zeros((size, size))
    for offset, weight in ((0.0, 1.0), (period / 2, 0.3)):  # A, then B at the cell's centre
        r, c = (rows.ravel() + offset + 5).astype(int), (cols.ravel() + offset + 5).astype(int)
        keep = (r < size) & (c < size)
        image[r[keep], c[keep]] += weight
    image = ndimage.gaussian_filter(image, 2.0) + np.random.default_rng(0).normal(0, 0.002, (size, size))
    found = estimate_lattice(image)
    assert found["spacing"] == pytest.approx(period, rel=0.03) and found["symmetry"] == 4, found
    # the {110} ring (a 128-px tile resolves a ring to about a pixel: 9.05 px reads 8.4)
    assert found["orientation_spacing"] == pytest.approx(period / np.sqrt(2), rel=0.1), found
