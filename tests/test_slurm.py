"""The sbatch templates on a real single-node SLURM cluster (slurm/local-cluster.sh)."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from models import load_checkpoint
from pipeline.patches import write_patches

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Start munged, slurmctld and slurmd; yield the environment that reaches them."""
    if shutil.which("slurmctld") is None:
        pytest.fail("SLURM is not installed: `make test` installs it (slurm/local-cluster.sh install, as root)")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "RVAE_VENV": sys.prefix,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in [k for k in env if k.startswith(("SLURM_", "OMPI_", "PMIX_")) and k != "SLURM_CONF"]:
        del env[key]  # never inherit an outer allocation
    yield env
    subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60)


def sbatch(env, cwd, *args):
    result = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def wait(env, job, timeout=300):
    """Poll until the job leaves the queue; return (state, exit code)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        state = re.search(r"JobState=(\w+)", info)
        if state and state.group(1) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return state.group(1), re.search(r" ExitCode=(\d+):", info).group(1)
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env)
    pytest.fail(f"job {job} did not finish in {timeout} s")


def test_run_template_runs_the_whole_chain(slurm, tmp_path):
    config = {"workdir": "out", "synthetic": {"size": 128}, "patches": {"window": 24},
              "train": {"epochs": 2, "batch_size": 32}, "encode": {"symmetry": 6}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    job = sbatch(slurm, tmp_path, "--cpus-per-task=2", ROOT / "slurm" / "rvae-run.sbatch", "run.yaml")
    state, code = wait(slurm, job)
    log = (tmp_path / f"rvae-run-{job}.out").read_text()
    assert (state, code) == ("COMPLETED", "0"), log[-3000:]
    assert xr.open_zarr(tmp_path / "out" / "results.zarr").attrs["complete"] is True


@pytest.fixture(scope="module")
def patches(lattice_cube, tmp_path_factory):
    path = tmp_path_factory.mktemp("slurm-patches") / "patches.zarr"
    write_patches(lattice_cube, path, window=16, max_samples=256, progress=False)
    return path


@pytest.mark.parametrize("backend", ["ddp", "horovod"])
def test_train_template_runs_two_ranks_under_srun(slurm, patches, tmp_path, backend):
    job = sbatch(slurm, tmp_path, "--ntasks=2", ROOT / "slurm" / "rvae-train.sbatch", patches,
                 tmp_path / "model.ckpt", "--backend", backend, "--epochs", 2, "--batch-size", 16)
    state, code = wait(slurm, job)
    log = (tmp_path / f"rvae-train-{job}.out").read_text()
    assert (state, code) == ("COMPLETED", "0"), log[-3000:]
    assert "(2 rank(s))" in log and log.count("epoch   2/2") == 1  # rank 0 alone reports
    _, payload = load_checkpoint(tmp_path / "model.ckpt")
    assert payload["finished"] and payload["settings"]["world_size"] == 2


def test_preempted_job_saves_and_the_resubmitted_job_resumes(slurm, patches, tmp_path):
    args = [ROOT / "slurm" / "rvae-train.sbatch", patches, tmp_path / "model.ckpt", "--backend", "ddp",
            "--epochs", 300, "--batch-size", 8]
    job = sbatch(slurm, tmp_path, "--ntasks=2", *args)
    log = tmp_path / f"rvae-train-{job}.out"
    deadline = time.monotonic() + 120
    while "epoch   1/300" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)  # what --signal=USR1@120 sends
    state, code = wait(slurm, job)
    assert code == "75", log.read_text()[-3000:]
    _, payload = load_checkpoint(tmp_path / "model.ckpt")
    assert not payload["finished"] and payload["epoch"] >= 2
    stopped_at = (payload["epoch"], payload["step"])

    args[args.index(300)] = payload["epoch"]  # resume and finish the epoch it was in
    job = sbatch(slurm, tmp_path, "--ntasks=2", *args)
    state, code = wait(slurm, job)
    text = (tmp_path / f"rvae-train-{job}.out").read_text()
    assert (state, code) == ("COMPLETED", "0"), text[-3000:]
    assert f"resuming from {tmp_path / 'model.ckpt'}: epoch {stopped_at[0]}, step {stopped_at[1]}" in text
    assert load_checkpoint(tmp_path / "model.ckpt")[1]["finished"]
