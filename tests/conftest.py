import os
import subprocess
import sys
from pathlib import Path

import pytest

import models  # noqa: F401  (sets Pyro's module-local parameters before any module is built)

os.environ.setdefault("OMP_NUM_THREADS", "2")

# Real vendor files (scripts/fetch-test-data.sh, run by `make test`): hyperspy 1.7.6's and atomap's test files.
TEST_DATA = Path(os.environ.get("RVAE_TEST_DATA", Path.home() / ".cache" / "rvae-hpc" / "testdata"))


@pytest.fixture(scope="session")
def real_file():
    """``real_file(name)``: the path of a real test file, which must be there (``make testdata``)."""
    def find(name):
        path = TEST_DATA / name
        assert path.exists(), f"{path} is missing: run `make testdata` (scripts/fetch-test-data.sh)"
        return path
    return find


@pytest.fixture(scope="session")
def rvae():
    """``rvae(*args, cwd=None)``: run the installed ``rvae`` console script, capturing its output."""
    script = Path(sys.executable).with_name("rvae")
    assert script.exists(), "the rvae console script is missing: pip install -e ."

    def run(*args, cwd=None, timeout=600):
        return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout)
    return run


@pytest.fixture(scope="session")
def lattice_cube(tmp_path_factory):
    """A small 4-grain hexagonal lattice cube with ground truth (session-wide, read-only)."""
    from pipeline.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("lattice") / "cube.zarr"
    write_synthetic(path, kind="lattice", size=224, seed=1)
    return path


@pytest.fixture(scope="session")
def diffraction_cube(tmp_path_factory):
    from pipeline.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("4dstem") / "cube.zarr"
    write_synthetic(path, kind="4dstem", size=16, seed=2)
    return path


@pytest.fixture
def snapshot():
    """``snapshot(path)``: every file under ``path`` with its bytes, to prove nothing was touched."""
    return tree_snapshot


def tree_snapshot(path):
    """Every file under ``path`` with its bytes: equal snapshots mean nothing was touched."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained_lattice(lattice_cube, tmp_path_factory):
    """Patch store and a briefly trained rVAE on the lattice (atom-centred 24-px windows)."""
    from pipeline.patches import write_patches
    from pipeline.train import train

    work = tmp_path_factory.mktemp("trained")
    write_patches(lattice_cube, work / "patches.zarr", mode="points", window=24, progress=False)
    train(work / "patches.zarr", work / "model.ckpt", epochs=30, batch_size=32, log=lambda line: None)
    return work / "patches.zarr", work / "model.ckpt"
