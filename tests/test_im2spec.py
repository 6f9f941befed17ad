"""im2spec / spec2im on an image and a spectrum image of one scan: the synthetic lattice's grains
carry their own spectra (the spectrum image made with the lattice's size, grains and seed has
the lattice's grains as its regions), so a window's lattice orientation tells its spectrum."""
import json

import numpy as np
import pytest
import xarray as xr


@pytest.fixture(scope="module")
def scan(tmp_path_factory, rvae):
    work = tmp_path_factory.mktemp("im2spec")
    common = ["--size", "128", "--grains", "4", "--seed", "0"]
    for kind, name, extra in (("lattice", "image.zarr", ["--spacing", "8"]),
                              ("spectra", "si.zarr", ["--channels", "64", "--dose", "300"])):
        done = rvae("synth", work / name, "--kind", kind, *common, *extra)
        assert done.returncode == 0, done.stderr
    return work


def test_the_spectrum_image_shares_the_lattice_s_grains(scan):
    image, spectra = xr.open_zarr(scan / "image.zarr"), xr.open_zarr(scan / "si.zarr")
    np.testing.assert_array_equal(image["grain"].values, spectra["region"].values)


@pytest.mark.slow  # two trainings of 3000 steps
def test_im2spec_beats_its_baselines_on_held_out_positions(scan, rvae):
    done = rvae("im2spec", scan / "image.zarr", scan / "si.zarr", scan / "out", "--window", "16",
                "--max-samples", "3000")
    assert done.returncode == 0, done.stderr
    scores = json.loads((scan / "out" / "scores.json").read_text())
    assert scores["held_out"] >= 200 and scores["channels"] == 64
    ours = scores["im2spec"]
    assert ours["model"] < ours["nearest_neighbour"] and ours["model"] < ours["pca_regression"], scores
    assert scores["spec2im"]["model"] < scores["spec2im"]["nearest_neighbour"], scores
    from models import load_checkpoint

    model, payload = load_checkpoint(scan / "out" / "im2spec.ckpt")
    assert model.kind == "im2spec" and len(payload["energy"]) == 64


def test_im2spec_refuses_cubes_of_different_scans_in_one_line(scan, tmp_path, rvae):
    assert rvae("synth", tmp_path / "small.zarr", "--kind", "spectra", "--size", "48").returncode == 0
    refused = rvae("im2spec", scan / "image.zarr", tmp_path / "small.zarr", tmp_path / "out")
    assert refused.returncode == 1 and "same scan" in refused.stderr and len(refused.stderr.splitlines()) == 1
    refused = rvae("im2spec", scan / "si.zarr", scan / "si.zarr", tmp_path / "out")
    assert refused.returncode == 1 and "needs an image with dims (y, x)" in refused.stderr
