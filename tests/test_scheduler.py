"""The Dask stages give the same stores on every scheduler: threads, a LocalCluster, an MPI job."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MPI_ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
PATCHES = ["--mode", "grid", "--window", "32", "--stride", "16", "--max-samples", "100"]


def assert_same_store(a, b):
    a, b = xr.open_zarr(a), xr.open_zarr(b)
    np.testing.assert_array_equal(a["patches"].values, b["patches"].values)
    np.testing.assert_array_equal(a["row"].values, b["row"].values)
    assert a.attrs["window_spec_scale"] == b.attrs["window_spec_scale"]


@pytest.fixture(scope="module")
def threaded(lattice_cube, tmp_path_factory, rvae):
    out = tmp_path_factory.mktemp("threads") / "p.zarr"
    assert rvae("patches", lattice_cube, out, "--dask", "threads", *PATCHES).returncode == 0
    return out


def test_local_cluster_gives_the_threaded_result(lattice_cube, threaded, tmp_path, rvae):
    result = rvae("patches", lattice_cube, tmp_path / "p.zarr", "--dask", "local", *PATCHES)
    assert result.returncode == 0, result.stderr
    assert_same_store(threaded, tmp_path / "p.zarr")


def test_dask_mpi_job_gives_the_threaded_result(lattice_cube, threaded, tmp_path):
    # 3 real MPI ranks: scheduler, client (the stage), one worker.
    command = [str(BIN / "mpirun"), "-n", "3", "--oversubscribe", str(BIN / "rvae"), "patches", str(lattice_cube),
               str(tmp_path / "p.zarr"), "--dask", "mpi", *PATCHES]
    result = subprocess.run(command, capture_output=True, text=True, env=MPI_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in result.stdout and result.stdout.count("wrote") == 1  # only the client rank talks
    assert_same_store(threaded, tmp_path / "p.zarr")


def test_dask_mpi_with_too_few_ranks_is_one_line(lattice_cube, tmp_path):
    command = [str(BIN / "mpirun"), "-n", "2", "--oversubscribe", str(BIN / "rvae"), "patches", str(lattice_cube),
               str(tmp_path / "p.zarr"), "--dask", "mpi"]
    result = subprocess.run(command, capture_output=True, text=True, env=MPI_ENV, timeout=120)
    assert result.returncode != 0
    assert "needs at least 3 ranks" in result.stderr
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.parametrize("kind", ["threads", "local"])
def test_zarr_decodes_in_as_many_threads_as_dask_runs(kind, tmp_path):
    # A fresh interpreter: zarr sizes its pool once, on a process's first chunk read.
    script = f"""
import os, numpy as np, zarr, zarr.core.sync
from pipeline.scheduler import dask_scheduler
with dask_scheduler({kind!r}):
    zarr.create_array({str(tmp_path / "a.zarr")!r}, data=np.arange(10))[:]
    print(zarr.core.sync._get_executor()._max_workers, os.cpu_count())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pool, cpus = result.stdout.split()
    assert pool == cpus


def test_the_threaded_scheduler_runs_a_stage_without_importing_distributed(lattice_cube, tmp_path):
    # distributed costs ~0.5 s to import: the threaded path must not pay it (Dask's lookup of a named
    # scheduler, its choice of rechunk method and our client check would each import it).
    script = f"""
import sys
from pipeline.patches import write_patches
from pipeline.scheduler import dask_scheduler

with dask_scheduler("threads"):
    write_patches({str(lattice_cube)!r}, {str(tmp_path / "p.zarr")!r}, mode="grid", window=32, max_samples=None,
                  progress=False)
print("distributed" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
    assert xr.open_zarr(tmp_path / "p.zarr")["patches"].shape[0] > 0
