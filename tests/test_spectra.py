"""Spectra as samples (``rvae patches --mode spectra``): each scan position's spectrum over an
energy range, its power-law background removed on request, binned; real and synthetic spectrum
images through ingest and the patch stage as a user runs them."""
import numpy as np
import pytest
import xarray as xr

from pipeline.spectra import channel_range, powerlaw_background

ENERGY = 300 + 2.0 * np.arange(200)  # eV: a core-loss window, 2 eV channels
EDGE = 450.0


def core_loss(shape, seed=0):
    """Counts of a power-law background (A E^-3) with an edge at :data:`EDGE` eV, Poisson noise."""
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.8, 1.2, shape)[..., None] * 2e9
    expected = amplitude * ENERGY ** -3.0 + np.where(ENERGY >= EDGE, 30.0 * np.exp(-(ENERGY - EDGE) / 80), 0.0)
    return rng.poisson(expected).astype(np.uint16), expected


@pytest.fixture(scope="module")
def spectrum_image(tmp_path_factory):
    """A 6 x 5 core-loss spectrum image written as HyperSpy writes one (rosettasciio's .hspy), and
    its cube as ``rvae ingest`` makes it."""
    from rsciio.hspy import file_writer

    from pipeline.ingest import ingest

    tmp_path = tmp_path_factory.mktemp("spectrum-image")
    data, expected = core_loss((6, 5))
    axes = [{"name": "y", "size": 6, "offset": 0.0, "scale": 0.5, "units": "nm", "navigate": True},
            {"name": "x", "size": 5, "offset": 0.0, "scale": 0.5, "units": "nm", "navigate": True},
            {"name": "Energy loss", "size": len(ENERGY), "offset": ENERGY[0], "scale": 2.0, "units": "eV",
             "navigate": False}]
    signal = {"data": data, "axes": axes, "original_metadata": {}, "attributes": {"_lazy": False},
              "tmp_parameters": {}, "learning_results": {}, "models": {}, "package_info": {},
              "metadata": {"General": {"title": "core loss"}, "Signal": {"signal_type": "EELS"}}}
    file_writer(str(tmp_path / "si.hspy"), signal, show_progressbar=False)
    ingest(tmp_path / "si.hspy", tmp_path / "cube.zarr", progress=False)
    return tmp_path / "cube.zarr", data, expected


def test_every_pixels_spectrum_over_the_range_is_a_sample(spectrum_image, tmp_path, rvae):
    cube, data, _ = spectrum_image
    done = rvae("patches", cube, tmp_path / "p.zarr", "--mode", "spectra", "--energy", "420:650",
                "--max-samples", "12")
    assert done.returncode == 0, done.stderr
    patches = xr.open_zarr(tmp_path / "p.zarr")
    keep = (ENERGY >= 420) & (ENERGY <= 650)
    assert patches["patches"].shape == (12, 1, 1, keep.sum())  # a bounded stack, a row of channels each
    assert patches.attrs["grid_shape"] == [6, 5]  # every pixel to encode
    np.testing.assert_allclose(patches["energy"].values, ENERGY[keep])
    assert patches["energy"].attrs["units"] == "eV"
    rows, cols = patches["row"].values.astype(int), patches["col"].values.astype(int)
    np.testing.assert_array_equal(patches["patches"].values[:, 0, 0], data[rows, cols][:, keep])  # counts as cut
    assert patches["patches"].dtype == data.dtype


def test_a_powerlaw_background_fitted_before_the_edge_is_removed_and_channels_binned(spectrum_image, tmp_path,
                                                                                     rvae):
    cube, *_ = spectrum_image
    done = rvae("patches", cube, tmp_path / "p.zarr", "--mode", "spectra", "--energy", "400:700",
                "--background", "powerlaw", "--pre-edge", "360:440", "--binning", "2")
    assert done.returncode == 0, done.stderr
    patches = xr.open_zarr(tmp_path / "p.zarr")
    values = patches["patches"].values[:, 0, 0]  # stored as made; readers normalise
    keep = (ENERGY >= 400) & (ENERGY <= 700)
    edge = np.where(ENERGY >= EDGE, 30.0 * np.exp(-(ENERGY - EDGE) / 80), 0.0)[keep]  # noise-free, less background
    binned = edge[:len(edge) // 2 * 2].reshape(-1, 2).sum(axis=1)
    assert values.shape == (30, len(binned))
    np.testing.assert_allclose(patches["energy"].values, ENERGY[keep][:len(binned) * 2].reshape(-1, 2).mean(1))
    # what is left is the edge, up to the counting noise (~8 counts a binned channel, 30 pixels)
    before, after = patches["energy"].values < EDGE - 4, patches["energy"].values >= EDGE + 4
    assert np.abs(values.mean(axis=0)[before]).max() < 5
    assert np.abs(values.mean(axis=0) - binned)[after].mean() < 3
    assert values[:, after][:, :5].mean() > 40


def test_the_background_fit_recovers_a_power_law():
    pre = ENERGY[:40]
    counts = np.stack([3e9 * pre ** -3.0, 5e7 * pre ** -2.5])
    found = powerlaw_background(counts, pre, ENERGY)
    np.testing.assert_allclose(found, np.stack([3e9 * ENERGY ** -3.0, 5e7 * ENERGY ** -2.5]), rtol=1e-4)


@pytest.mark.parametrize("args, fragment", [
    (["--energy", "900:1000"], "holds 0 channel(s) of the energy axis (300 to 698)"),
    (["--energy", "500:400"], "lo must be below hi"),
    (["--energy", "abc"], "give lo:hi in the energy axis' units"),
    (["--background", "powerlaw"], "needs --pre-edge lo:hi"),
    (["--pre-edge", "360:440"], "it needs --background powerlaw"),
    (["--binning", "150"], "leaves fewer than 2 channels"),
    (["--channels", "400:500"], "--mode spectra takes each position's spectrum"),
])
def test_bad_spectra_settings_are_one_line(spectrum_image, tmp_path, rvae, args, fragment):
    cube, *_ = spectrum_image
    refused = rvae("patches", cube, tmp_path / "p.zarr", "--mode", "spectra", *args)
    assert refused.returncode == 1 and fragment in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.zarr").exists()


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_spectra_mode_needs_a_spectrum_image(tmp_path, rvae):
    from pipeline.synthetic import lattice_grains

    np.save(tmp_path / "image.npy", lattice_grains(size=64, seed=0)["data"].values)
    assert rvae("ingest", tmp_path / "image.npy", tmp_path / "image.zarr").returncode == 0
    refused = rvae("patches", tmp_path / "image.zarr", tmp_path / "p.zarr", "--mode", "spectra")
    assert refused.returncode == 1 and "needs a spectrum image with dims (y, x, energy)" in refused.stderr
    refused = rvae("patches", tmp_path / "image.zarr", tmp_path / "p.zarr", "--window", "16", "--energy", "1:2")
    assert refused.returncode == 1 and "apply to --mode spectra" in refused.stderr
    assert rvae("patches", tmp_path / "image.zarr", tmp_path / "p.zarr", "--window", "16").returncode == 0
    refused = rvae("train", tmp_path / "p.zarr", tmp_path / "m.ckpt", "--likelihood", "poisson")
    assert refused.returncode == 1 and "for spectra" in refused.stderr and not (tmp_path / "m.ckpt").exists()


def test_a_real_eels_spectrum_image_from_a_package(tmp_path, rvae, real_file):
    """HyperSpy 1.7.6's Gatan EELS spectrum image (2 x 2 positions, 2048 channels in eV): patches
    as cut, then every stage to a report."""
    assert rvae("ingest", real_file("EELS_SI.dm4"), tmp_path / "cube.zarr").returncode == 0
    cube = xr.open_zarr(tmp_path / "cube.zarr")["data"]
    lo, hi = float(cube["energy"][100]), float(cube["energy"][1100])
    done = rvae("patches", tmp_path / "cube.zarr", tmp_path / "p.zarr", "--mode", "spectra", "--energy",
                f"{lo}:{hi}", "--binning", "4")
    assert done.returncode == 0, done.stderr
    patches = xr.open_zarr(tmp_path / "p.zarr")
    start, stop = channel_range(cube["energy"].values, f"{lo}:{hi}")
    assert patches["patches"].shape == (4, 1, 1, (stop - start) // 4)
    values = patches["patches"].values[:, 0, 0]
    rows, cols = patches["row"].values.astype(int), patches["col"].values.astype(int)
    spectra = cube.values[rows, cols, start:start + (stop - start) // 4 * 4].astype(np.float64)
    np.testing.assert_allclose(values, spectra.reshape(4, -1, 4).sum(axis=2), rtol=1e-4, atol=1e-2)
    for step in (("train", tmp_path / "p.zarr", tmp_path / "m.ckpt"),
                 ("encode", tmp_path / "cube.zarr", tmp_path / "p.zarr", tmp_path / "m.ckpt", tmp_path / "r.zarr"),
                 ("report", tmp_path / "r.zarr", tmp_path / "report")):
        done = rvae(*step)
        assert done.returncode == 0, done.stderr
    results = xr.open_zarr(tmp_path / "r.zarr")
    assert results["shift"].shape == (2, 2) and results["shift"].attrs["units"] == "eV"
    assert np.isfinite(results["shift"].values).all() and (tmp_path / "report" / "shift_map.png").exists()


@pytest.mark.slow  # every stage
def test_a_real_cathodoluminescence_line_scan_through_every_stage(tmp_path, rvae, real_file):
    """HyperSpy 1.7.6's CL line scan (67 positions, 1336 wavelengths in nm): a shift map in nm."""
    assert rvae("ingest", real_file("test-MonoCL_spectrum-SI.dm4"), tmp_path / "cube.zarr").returncode == 0
    for step in (("patches", tmp_path / "cube.zarr", tmp_path / "p.zarr", "--mode", "spectra", "--binning", "4"),
                 ("train", tmp_path / "p.zarr", tmp_path / "m.ckpt"),
                 ("encode", tmp_path / "cube.zarr", tmp_path / "p.zarr", tmp_path / "m.ckpt", tmp_path / "r.zarr"),
                 ("report", tmp_path / "r.zarr", tmp_path / "report")):
        done = rvae(*step)
        assert done.returncode == 0, done.stderr
    results = xr.open_zarr(tmp_path / "r.zarr")
    assert results["shift"].shape == (1, 67) and results["shift"].attrs["units"] == "nm"
    assert np.isfinite(results["reference_shift"].values).all()
    assert "shift along energy" in (tmp_path / "report" / "summary.txt").read_text()
