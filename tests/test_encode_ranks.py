"""Encoding on N ranks (torchrun, mpirun) and on Dask workers writes the store one process writes."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import xarray as xr
import zarr

from pipeline.encode import encode
from pipeline.patches import write_patches
from pipeline.results import blocks_done
from pipeline.train import train

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
VARIABLES = ("angle", "angle_std", "z", "z_std", "recon_error")


@pytest.fixture(scope="module")
def dense(lattice_cube, tmp_path_factory):
    """A stride-1 grid (201 x 201 windows of 24 px) to encode in 100 blocks, and one process's results."""
    work = tmp_path_factory.mktemp("ranks")
    write_patches(lattice_cube, work / "p.zarr", mode="grid", window=24, stride=1, max_samples=512, progress=False)
    train(work / "p.zarr", work / "m.ckpt", epochs=1, batch_size=64, model_options={"hidden": (32, 32)},
          log=lambda line: None)
    encode(lattice_cube, work / "p.zarr", work / "m.ckpt", work / "one.zarr", block=404, log=lambda line: None)
    return work


def ranks(launcher, n=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    start = {"torchrun": [str(BIN / "torchrun"), "--nproc-per-node", str(n), "--master-port", "29651"],
             "mpirun": [str(BIN / "mpirun"), "-np", str(n), "--oversubscribe", sys.executable]}[launcher]
    return [*start, "-m", "pipeline.cli", "encode"], env


def args(lattice_cube, work, out):
    return [str(lattice_cube), str(work / "p.zarr"), str(work / "m.ckpt"), str(out), "--block", "404",
            "--dask", "threads"]


def assert_same_results(a, b):
    ra, rb = xr.open_zarr(a), xr.open_zarr(b)
    assert ra.attrs["complete"] is True and rb.attrs["complete"] is True
    # the chunk record survives the last attribute writes, however many ranks wrote the store
    assert ra.attrs["chunks_written"] == rb.attrs["chunks_written"] and ra.attrs["chunks_written"]["angle"] > 1
    for name in VARIABLES:
        np.testing.assert_allclose(ra[name].values, rb[name].values, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(rb[name].values).all(), name


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_two_ranks_write_the_store_one_process_writes(launcher, lattice_cube, dense, tmp_path):
    command, env = ranks(launcher)
    done = subprocess.run([*command, *args(lattice_cube, dense, tmp_path / "two.zarr")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on each of 2 ranks" in done.stdout
    assert_same_results(dense / "one.zarr", tmp_path / "two.zarr")
    assert xr.open_zarr(tmp_path / "two.zarr").attrs["world_size"] == 2


def test_a_killed_rank_s_blocks_are_redone_on_rerun_and_only_those(lattice_cube, dense, tmp_path):
    command, env = ranks("torchrun")
    out = tmp_path / "two.zarr"
    proc = subprocess.Popen([*command, *args(lattice_cube, dense, out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("encoded block"):  # rank 0 has done a tenth of its blocks
            workers = [p for p in psutil.Process(proc.pid).children() if "pipeline.cli" in " ".join(p.cmdline())]
            workers[-1].kill()
            break
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    partial = zarr.open_group(str(out), mode="r")
    done = blocks_done(partial)
    written = int(done.sum())
    assert partial.attrs["complete"] is False and 0 < written < len(done)
    again = subprocess.run([*command, *args(lattice_cube, dense, out)], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {written} of {len(done)} blocks already written" in again.stdout
    assert_same_results(dense / "one.zarr", out)


def test_dask_workers_write_the_store_one_process_writes(lattice_cube, dense, tmp_path):
    """``--dask mpi``: three ranks (scheduler, client, worker); the blocks are the worker's tasks."""
    command, env = ranks("mpirun", 3)
    mpi_args = args(lattice_cube, dense, tmp_path / "dask.zarr")
    done = subprocess.run([*command, *mpi_args[:-1], "mpi"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 1 workers" in done.stdout
    assert_same_results(dense / "one.zarr", tmp_path / "dask.zarr")
