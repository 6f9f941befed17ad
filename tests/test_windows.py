import dask.array as da
import numpy as np
import pytest

from pipeline.evaluate import circular_error
from pipeline.peaks import find_atom_columns
from pipeline.results import wrap_angle
from pipeline.synthetic import render_gaussians
from pipeline.windows import ScanGrid, WindowSpec, bin_frames, cut_windows, log_fft_magnitude


def test_cut_windows_takes_the_pixels_around_each_centre():
    image = np.arange(100).reshape(10, 10)
    windows = cut_windows(image, np.array([[5, 5], [2, 3]]), 4)
    np.testing.assert_array_equal(windows[0], image[3:7, 3:7])
    np.testing.assert_array_equal(windows[1], image[0:4, 1:5])


def test_scan_grid_covers_the_image_at_the_stride_without_listing_it():
    grid = ScanGrid.of_windows((100, 70), window=20, stride=10)
    centres = np.asarray(grid)
    assert grid.shape == (9, 6) and len(grid) == 54 and centres.shape == (54, 2)
    assert centres.min() == 10 and centres[:, 0].max() == 90 and centres[:, 1].max() == 60
    np.testing.assert_array_equal(grid[[7, 53]], centres[[7, 53]])  # row-major flat indices
    np.testing.assert_array_equal(grid[8:20], centres[8:20])
    np.testing.assert_array_equal(np.asarray(grid - (5, 3)), centres - [5, 3])
    assert ScanGrid.from_attrs(grid.to_attrs()) == grid


def test_log_fft_magnitude_ignores_lattice_phase_but_follows_its_rotation():
    yy, xx = np.mgrid[0:32, 0:32].astype(float)

    def stripes(angle, phase):
        return np.cos(2 * np.pi / 6 * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)

    base = log_fft_magnitude(stripes(0.3, 0.0)[None])[0]
    shifted = log_fft_magnitude(stripes(0.3, 2.0)[None])[0]
    turned = log_fft_magnitude(stripes(0.9, 0.0)[None])[0]
    assert np.abs(base - shifted).mean() < 0.05 * np.abs(base - turned).mean()
    assert np.abs(stripes(0.3, 0.0) - stripes(0.3, 2.0)).mean() > 0.5  # the raw windows do differ


def test_window_spec_round_trips_through_attrs_and_normalises():
    spec = WindowSpec(mode="grid", window=8, transform="logfft", offset=1.0, scale=4.0)
    assert WindowSpec.from_attrs({"other": 1, **spec.to_attrs()}) == spec
    np.testing.assert_allclose(spec.normalise(np.array([1.0, 5.0])), [0.0, 1.0])


def test_bin_frames_sums_blocks():
    frames = np.ones((2, 6, 7))
    binned = bin_frames(frames, 2)
    assert binned.shape == (2, 3, 3) and np.all(binned == 4)


def test_peak_finder_recovers_subpixel_positions_across_tiles():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(6, 90, 8.0), np.arange(6, 90, 8.0)), -1).reshape(-1, 2)
    truth = grid + rng.uniform(-0.5, 0.5, grid.shape)
    image = render_gaussians((96, 96), truth, 1.5)
    found = find_atom_columns(da.from_array(image, chunks=40), min_distance=3, tile=32)
    assert len(found) == len(truth)  # every column once, none twice at tile seams
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(truth).query(found)
    assert distance.max() < 0.15


def test_wrap_angle_into_symmetry_period():
    period = 2 * np.pi / 6
    angles = np.array([0.1, period / 2, -period / 2, period + 0.1, -3.0])
    wrapped = wrap_angle(angles, 6)
    assert np.all(wrapped <= period / 2 + 1e-12) and np.all(wrapped > -period / 2)
    np.testing.assert_allclose(np.cos(6 * wrapped), np.cos(6 * angles), atol=1e-12)
    assert wrapped[2] == pytest.approx(period / 2)


def test_circular_error_removes_a_global_offset_modulo_symmetry():
    true = np.array([0.0, 0.2, -0.3, 0.4])
    predicted = true + 0.5 + np.array([0, 2 * np.pi / 6, 0, -2 * np.pi / 6])  # offset + symmetry jumps
    error, offset = circular_error(predicted, true, symmetry=6)
    np.testing.assert_allclose(error, 0, atol=1e-12)
    assert offset == pytest.approx(0.5)
