import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.encode import encode
from pipeline.evaluate import rotation_error
from pipeline.patches import write_patches
from pipeline.results import blocks_done
from pipeline.stores import open_store
from pipeline.train import train


class Interrupt(Exception):
    pass


def test_results_follow_the_contract(lattice_cube, trained_lattice, tmp_path):
    patches, checkpoint = trained_lattice
    encode(lattice_cube, patches, checkpoint, tmp_path / "r.zarr", symmetry=6, block=300, log=lambda s: None)
    results = xr.open_zarr(tmp_path / "r.zarr")
    n = open_store(patches)["position_row"].size
    assert results.attrs["complete"] is True
    assert results["angle"].dims == ("sample",) and results.sizes["sample"] == n
    assert results["z"].dims == ("latent", "sample") and results.sizes["latent"] == 2
    for name in ("angle", "angle_std", "z", "z_std", "recon_error"):
        assert results[name].attrs["long_name"] and "units" in results[name].attrs
        assert np.isfinite(results[name].values).all()
    assert results["angle"].attrs["units"] == "rad" and results["y"].attrs["units"] == "nm"
    angle = results["angle"].values
    assert angle.max() <= np.pi / 6 + 1e-6 and angle.min() > -np.pi / 6 - 1e-6
    for key in ("source", "source_mtime", "config", "checkpoint", "checkpoint_sha256", "software_version",
                "git_commit", "created", "symmetry"):
        assert key in results.attrs
    assert results.attrs["checkpoint_sha256"] and len(results.attrs["checkpoint_sha256"]) == 64
    # the science: the four grains' rotations come back (up to one global offset, modulo 60 deg)
    truth = open_store(lattice_cube)["true_angle"].load()
    score = rotation_error(results, truth)
    assert score["mae_deg"] < 4.0, score


def test_interrupted_encode_resumes_and_matches_an_uninterrupted_run(lattice_cube, trained_lattice, tmp_path):
    patches, checkpoint = trained_lattice
    encode(lattice_cube, patches, checkpoint, tmp_path / "full.zarr", block=100, log=lambda s: None)

    def stop_after_first_block(line):
        if line.startswith("encoded block 2/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        encode(lattice_cube, patches, checkpoint, tmp_path / "r.zarr", block=100, log=stop_after_first_block)
    partial = xr.open_zarr(tmp_path / "r.zarr")
    assert partial.attrs["complete"] is False and blocks_done(zarr.open_group(str(tmp_path / "r.zarr"))).sum() == 2
    assert "block_done" not in partial  # bookkeeping, not results
    lines = []
    encode(lattice_cube, patches, checkpoint, tmp_path / "r.zarr", block=100, log=lines.append)
    assert lines[0].startswith("resuming: 2 of ")
    resumed, full = xr.open_zarr(tmp_path / "r.zarr"), xr.open_zarr(tmp_path / "full.zarr")
    assert resumed.attrs["complete"] is True
    for name in ("angle", "z", "recon_error"):
        np.testing.assert_allclose(resumed[name].values, full[name].values, rtol=1e-5, atol=1e-6)


def test_complete_results_are_never_overwritten_without_asking(lattice_cube, trained_lattice, tmp_path, snapshot):
    patches, checkpoint = trained_lattice
    out = tmp_path / "r.zarr"
    encode(lattice_cube, patches, checkpoint, out, log=lambda s: None)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="already holds complete results"):
        encode(lattice_cube, patches, checkpoint, out, log=lambda s: None)
    assert snapshot(out) == before


def test_grid_results_map_back_onto_the_scan_grid(lattice_cube, tmp_path):
    write_patches(lattice_cube, tmp_path / "p.zarr", mode="grid", window=32, stride=8, transform="logfft",
                  progress=False)
    train(tmp_path / "p.zarr", tmp_path / "m.ckpt", epochs=2, log=lambda s: None)
    encode(lattice_cube, tmp_path / "p.zarr", tmp_path / "m.ckpt", tmp_path / "r.zarr", block=100,
           log=lambda s: None)
    results = xr.open_zarr(tmp_path / "r.zarr")
    assert results["angle"].dims == ("y", "x") and results["angle"].shape == (25, 25)
    assert results["z"].dims == ("latent", "y", "x")
    pixel = 0.03
    np.testing.assert_allclose(results["y"].values[:2], [16 * pixel, 24 * pixel])
    assert np.isfinite(results["angle"].values).all()


def test_checkpoint_for_other_windows_is_refused(lattice_cube, trained_lattice, tmp_path):
    _, checkpoint = trained_lattice
    write_patches(lattice_cube, tmp_path / "p.zarr", mode="points", window=16, max_samples=10, progress=False)
    with pytest.raises(ValueError, match=r"checkpoint expects \(24, 24\) samples"):
        encode(lattice_cube, tmp_path / "p.zarr", checkpoint, tmp_path / "r.zarr")
    assert not (tmp_path / "r.zarr").exists()


def test_sigusr1_stops_encode_after_its_block_and_a_rerun_finishes(lattice_cube, trained_lattice, tmp_path):
    import os
    import signal

    from pipeline.preemption import Preempted

    patches, checkpoint = trained_lattice
    encode(lattice_cube, patches, checkpoint, tmp_path / "full.zarr", block=100, log=lambda s: None)

    def signal_after_first_block(line):  # what SLURM's --signal=USR1 does, from outside
        if line.startswith("encoded block 1/"):
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Preempted, match="stopped by SIGUSR1 after"):
        encode(lattice_cube, patches, checkpoint, tmp_path / "r.zarr", block=100, log=signal_after_first_block)
    partial = xr.open_zarr(tmp_path / "r.zarr")
    done = blocks_done(zarr.open_group(str(tmp_path / "r.zarr")))
    assert partial.attrs["complete"] is False and 1 <= done.sum() < len(done)
    encode(lattice_cube, patches, checkpoint, tmp_path / "r.zarr", block=100, log=lambda s: None)
    resumed, full = xr.open_zarr(tmp_path / "r.zarr"), xr.open_zarr(tmp_path / "full.zarr")
    assert resumed.attrs["complete"] is True
    for name in ("angle", "z", "recon_error"):
        np.testing.assert_allclose(resumed[name].values, full[name].values, rtol=1e-5, atol=1e-6)


def test_a_window_centred_on_the_other_sublattice_is_given_in_its_neighbours_convention(tmp_path):
    """A 3-fold lattice whose spectrum reads 6-fold: a column window on the other sublattice sees the
    lattice turned by 60 degrees. Such windows, alone among their neighbours, are turned back and
    marked; doing it again changes nothing."""
    import zarr

    from pipeline.results import wrap_angle, write_sublattice_convention

    rows, cols = (v.ravel().astype(float) for v in np.mgrid[:20, :20] * 10.0)
    angle = np.full(len(rows), np.radians(12.0))
    odd = np.random.default_rng(0).choice(len(rows), 12, replace=False)
    angle[odd] += np.radians(60)
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="w")
    group.attrs["symmetry"] = 3
    for name, values in (("angle", wrap_angle(angle, 3)), ("row", rows), ("col", cols),
                         ("other_sublattice", np.full(len(rows), np.nan))):
        group.create_array(name, data=values.astype(np.float32))
    for _ in range(2):
        write_sublattice_convention(group)
        np.testing.assert_allclose(np.degrees(group["angle"][:]), 12.0, atol=1e-4)
        assert set(np.flatnonzero(group["other_sublattice"][:])) == set(odd)
