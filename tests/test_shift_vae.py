"""The shift-invariant VAE for spectra: its decoders move a spectrum by the shift, it survives a
checkpoint, and through the pipeline's own stages it recovers known shifts on a synthetic
spectrum image (one rank and two) as well as the classical estimate does."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from models import SpectrumVAE, build_model, load_checkpoint, save_checkpoint
from models.shift_search import best_shift
from pipeline.spectra import classical_shifts, cross_correlation_shift, shift_spectra

CHANNELS = 64


@pytest.mark.parametrize("decoder", ["warp", "spatial", "broadcast"])
def test_each_decoder_moves_its_spectrum_by_the_shift(decoder):
    torch.manual_seed(0)
    model = SpectrumVAE((1, 1, CHANNELS), decoder=decoder)
    code = torch.randn(3, 2)
    with torch.no_grad():
        still = model.decoder(code, torch.zeros(3))
        for k in (1, 3, -2):  # k channels: the spectrum seen k channels further along (away from its ends)
            moved = model.decoder(code, torch.full((3,), 2.0 * k / CHANNELS))
            inner = slice(8 + max(k, 0), CHANNELS - 8 + min(k, 0))
            torch.testing.assert_close(moved[..., inner], still[..., inner.start - k:inner.stop - k],
                                       atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("decoder", ["warp", "spatial", "broadcast"])
def test_a_plain_vae_of_spectra_encodes_without_a_shift(decoder):
    from pipeline.encode import encode_spectra

    model = SpectrumVAE((1, 1, CHANNELS), shift=False, decoder=decoder)
    samples = np.random.default_rng(0).random((5, 1, 1, CHANNELS), dtype=np.float32)
    mean, std, error, offset = encode_spectra(model, samples, 2, energy_per_channel=0.5)
    assert mean.shape == std.shape == (5, 2) and error.shape == offset.shape == (5,)
    torch.testing.assert_close(torch.from_numpy(error), ((model.reconstruct(torch.from_numpy(samples)) -
                                                         torch.from_numpy(samples)) ** 2).mean(dim=(1, 2, 3)))


def test_the_search_finds_a_known_shift_to_a_fraction_of_a_channel():
    torch.manual_seed(1)
    model = SpectrumVAE((1, 1, CHANNELS))
    code = torch.randn(4, 2)
    true = torch.tensor([-3.3, -0.4, 0.7, 2.25]) * 2 / CHANNELS
    with torch.no_grad():
        rendering = model.renderer(code)
        target = rendering(true)
        found = best_shift(target, rendering, torch.zeros(4), CHANNELS)
    assert (found - true).abs().max() * CHANNELS / 2 < 0.05


def test_a_spectrum_vae_checkpoint_rebuilds_the_same_model(tmp_path):
    model = SpectrumVAE((1, 1, CHANNELS), likelihood="poisson", count_scale=40.0, decoder="spatial", latent_dim=3)
    save_checkpoint(tmp_path / "m.ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "m.ckpt")
    assert isinstance(loaded, SpectrumVAE) and loaded.config == model.config
    x = torch.rand(5, 1, 1, CHANNELS)
    torch.testing.assert_close(loaded.encode(x)[0], model.encode(x)[0])
    with pytest.raises(ValueError, match="kind 'sound'"):
        build_model({**model.config, "kind": "sound"})


def test_the_classical_estimate_recovers_shifts_of_one_shape():
    channel = np.arange(CHANNELS, dtype=float)
    shape = np.exp(-0.5 * ((channel - 20) / 2.0) ** 2) + 0.5 * (1 + np.tanh((channel - 40) / 2))
    true = np.random.default_rng(0).uniform(-4, 4, 50)
    spectra = shift_spectra(np.repeat(shape[None], 50, 0), true)
    estimate = cross_correlation_shift(spectra, shape)
    assert np.abs(estimate - true).max() < 0.1
    iterated, reference = classical_shifts(spectra)
    assert np.abs((iterated - true) - np.median(iterated - true)).max() < 0.1 and reference.shape == (CHANNELS,)


def channel_mae(results, cube, name="shift"):
    """MAE of a results shift map against the truth, in channels, after one global offset."""
    step = float(np.diff(cube["energy"].values[:2])[0])
    difference = (results[name].values - cube["true_shift"].values) / step
    return float(np.abs(difference - np.median(difference)).mean())


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, rvae):
    """A 24 x 24 synthetic spectrum image (64 channels, shifts up to 6 channels, dose 200) through
    synth, patches, train and encode with the defaults, as a user runs them."""
    work = tmp_path_factory.mktemp("shift-vae")
    steps = [("synth", work / "cube.zarr", "--kind", "spectra", "--size", "24", "--channels", str(CHANNELS)),
             ("patches", work / "cube.zarr", work / "p.zarr", "--mode", "spectra"),
             ("train", work / "p.zarr", work / "m.ckpt"),
             ("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", work / "r.zarr")]
    for step in steps:
        done = rvae(*step)
        assert done.returncode == 0, done.stderr
    return work


def test_the_shift_vae_recovers_known_shifts_as_well_as_the_classical_estimate(encoded):
    cube, results = xr.open_zarr(encoded / "cube.zarr"), xr.open_zarr(encoded / "r.zarr")
    assert results["shift"].attrs["units"] == "eV" and results.attrs["mode"] == "spectra"
    assert results["shift"].dims == ("y", "x") and results["z"].shape == (2, 24, 24)
    vae, classical = channel_mae(results, cube), channel_mae(results, cube, "reference_shift")
    assert vae < 0.3, (vae, classical)  # shifts of +-6 channels, Poisson noise at 200 counts
    assert vae <= classical + 0.1, (vae, classical)
    model, _ = load_checkpoint(encoded / "m.ckpt")
    assert isinstance(model, SpectrumVAE) and model.shift and model.likelihood == "gaussian"


def test_the_report_export_and_accessor_show_a_shift_map(encoded, rvae):
    import pipeline  # noqa: F401  (registers ds.rvae)
    from pipeline.results import open_results

    done = rvae("report", encoded / "r.zarr", encoded / "report")
    assert done.returncode == 0, done.stderr
    for name in ("shift_map", "latent_maps", "decoded_spectra", "pca_nmf"):
        assert (encoded / "report" / f"{name}.png").stat().st_size > 10_000, name
    summary = (encoded / "report" / "summary.txt").read_text()
    assert "shift along energy" in summary and "classical reference (cross-correlation" in summary
    assert "WARNING" not in summary
    decoded = open_results(encoded / "r.zarr").rvae.decoded_spectra(n=5)
    assert decoded.shape == (2, 5, CHANNELS) and decoded["energy"].attrs["units"] == "eV"
    assert rvae("export", encoded / "r.zarr", encoded / "r.hspy").returncode == 0
    from rsciio.hspy import file_reader

    signal = file_reader(str(encoded / "r.hspy"))[0]
    names = signal["metadata"]["Signal"]["quantities"]
    np.testing.assert_allclose(signal["data"][..., names.index("shift")], xr.open_zarr(encoded / "r.zarr")["shift"])


def test_poisson_scores_counts_only(encoded, tmp_path, rvae):
    refused = rvae("patches", encoded / "cube.zarr", tmp_path / "bg.zarr", "--mode", "spectra", "--background",
                   "powerlaw", "--pre-edge", "270:280")
    assert refused.returncode == 0, refused.stderr
    refused = rvae("train", tmp_path / "bg.zarr", tmp_path / "m.ckpt", "--likelihood", "poisson")
    assert refused.returncode == 1 and "not counts" in refused.stderr and not (tmp_path / "m.ckpt").exists()
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # two ranks
def test_two_ranks_encode_the_spectra_one_process_encodes(encoded, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run([str(bin_dir / "torchrun"), "--nproc-per-node", "2", "--master-port", "29653", "-m",
                           "pipeline.cli", "encode", str(encoded / "cube.zarr"), str(encoded / "p.zarr"),
                           str(encoded / "m.ckpt"), str(tmp_path / "two.zarr"), "--block", "96"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on each of 2 ranks" in done.stdout
    one, two = xr.open_zarr(encoded / "r.zarr"), xr.open_zarr(tmp_path / "two.zarr")
    assert two.attrs["world_size"] == 2 and two.attrs["complete"] is True
    for name in ("shift", "shift_std", "z", "z_std", "recon_error", "reference_shift", "reference_difference"):
        np.testing.assert_allclose(two[name].values, one[name].values, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow  # the whole chain
def test_the_spectra_example_runs_the_whole_chain(tmp_path, rvae):
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "examples" / "spectra.yaml").read_text())
    config["workdir"] = str(tmp_path / "run")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = rvae("run", tmp_path / "run.yaml")
    assert done.returncode == 0, done.stderr
    cube, results = xr.open_zarr(tmp_path / "run" / "cube.zarr"), xr.open_zarr(tmp_path / "run" / "results.zarr")
    assert channel_mae(results, cube) < 0.15  # 64 x 64 positions, dose 200: the noise's floor is ~0.1
    assert "shift along energy" in (tmp_path / "run" / "report" / "summary.txt").read_text()


def test_a_run_configuration_says_when_spectra_have_no_spectrum_image(tmp_path, rvae):
    (tmp_path / "run.yaml").write_text(f"workdir: {tmp_path / 'run'}\npatches:\n  mode: spectra\n")
    refused = rvae("run", tmp_path / "run.yaml")
    assert refused.returncode == 1 and "needs a spectrum image" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
