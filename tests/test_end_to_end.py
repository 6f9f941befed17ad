"""Whole runs with assertions on the science: recovered rotations against the ground truth."""
import pytest
import xarray as xr
import yaml

from pipeline.evaluate import rotation_error

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow


def run_config(rvae, tmp_path, config):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = rvae("run", "run.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    work = tmp_path / config["workdir"]
    results = xr.open_zarr(work / "results.zarr")
    truth = xr.open_zarr(work / "cube.zarr")["true_angle"].load()
    return results, rotation_error(results, truth), result.stdout


def test_atom_centred_lattice_run_recovers_grain_rotations(tmp_path, rvae):
    results, score, stdout = run_config(rvae, tmp_path, {
        "workdir": "out", "synthetic": {"size": 256, "seed": 5},
        "patches": {"window": 32}, "train": {"epochs": 25, "batch_size": 32}, "encode": {"symmetry": 6}})
    assert results.attrs["complete"] and "[report]" in stdout
    assert score["mae_deg"] < 3.0, score
    assert "patches:\n  mode: points" in results.attrs["config"]
    assert (tmp_path / "out" / "report" / "rotation_map.png").exists()


def test_4dstem_frames_run_recovers_the_orientation_map(tmp_path, rvae):
    # Four grains are four distinct patterns: with two content latents a VAE can memorise them
    # without using its angle, so one content latent here (see README, "Which windows for which data").
    results, score, _ = run_config(rvae, tmp_path, {
        "workdir": "out", "synthetic": {"kind": "4dstem", "size": 16, "seed": 1},
        "patches": {"mode": "frames"}, "model": {"likelihood": "gaussian", "latent_dim": 1},
        "train": {"epochs": 60, "batch_size": 32}, "encode": {"symmetry": 6}})
    assert results["angle"].dims == ("y", "x") and results["angle"].shape == (16, 16)
    assert score["mae_deg"] < 3.0, score


def test_grid_windows_need_the_fft_transform_to_read_lattice_orientation(tmp_path, rvae):
    # a 60-degree-periodic lattice's angles span +-0.52 rad: a prior that wide keeps the FFT run stable
    common = {"synthetic": {"size": 256, "seed": 5}, "train": {"epochs": 15, "batch_size": 64},
              "model": {"angle_prior": 0.3}, "encode": {"symmetry": 6}}
    _, plain, _ = run_config(rvae, tmp_path, {**common, "workdir": "plain",
                                        "patches": {"mode": "grid", "window": 32, "stride": 8}})
    _, fft, _ = run_config(rvae, tmp_path, {**common, "workdir": "fft",
                                      "patches": {"mode": "grid", "window": 32, "stride": 8, "transform": "logfft"}})
    assert fft["mae_deg"] < 3.0, fft
    assert plain["mae_deg"] > 2 * fft["mae_deg"], (plain, fft)
