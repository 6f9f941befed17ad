"""The sbatch templates and ``rvae submit`` on a real single-node SLURM cluster (slurm/local-cluster.sh)."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from models import load_checkpoint
from pipeline.patches import write_patches

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

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


# ---- rvae submit: the chain as one job per stage ----------------------------------------------------

CHAIN = {"workdir": "out", "synthetic": {"size": 128}, "patches": {"window": 24},
         "train": {"epochs": 2, "batch_size": 16}, "encode": {"symmetry": 6, "block": 256}}


def rvae_cli(env, cwd, *args, timeout=600):
    return subprocess.run([str(Path(sys.executable).with_name("rvae")), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit_chain(env, cwd, config, *args):
    (cwd / "run.yaml").write_text(yaml.safe_dump(config))
    done = rvae_cli(env, cwd, "submit", "run.yaml", *args)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((cwd / "out" / "slurm" / "manifest.json").read_text())["submissions"][-1]
    return {entry["stage"]: entry["job_id"] for entry in manifest["stages"]}


def assert_same_store(a, b, **tolerance):
    xr.testing.assert_allclose(xr.open_zarr(a).load(), xr.open_zarr(b).load(), **tolerance)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """``rvae run`` of the chain's config in one process."""
    work = tmp_path_factory.mktemp("reference")
    (work / "run.yaml").write_text(yaml.safe_dump(CHAIN))
    done = subprocess.run([str(Path(sys.executable).with_name("rvae")), "run", "run.yaml"], cwd=work,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # as in the batch jobs (a CPU a rank)
    assert done.returncode == 0, done.stderr
    return work / "out"


@pytest.mark.parametrize("backend, ranks", [("horovod", 2), ("ddp", 2), ("none", 1)])
def test_submit_runs_every_stage_as_a_chained_job(slurm, reference_run, tmp_path, backend, ranks):
    options = ["--backend", backend] if ranks > 1 else ["--tasks-per-node", 1]
    jobs = submit_chain(slurm, tmp_path, CHAIN, *options)
    assert list(jobs) == ["cube", "patches", "train", "encode", "report"]
    for stage, job in jobs.items():
        state, code = wait(slurm, job)
        log = (tmp_path / "out" / "slurm" / "logs" / f"{stage}.log").read_text()
        assert (state, code) == ("COMPLETED", "0"), f"{stage}: {log[-3000:]}"
    out = tmp_path / "out"
    train_log = (out / "slurm" / "logs" / "train.log").read_text()
    assert f"training on {ranks} rank(s) (" in train_log and "\r" not in train_log
    assert re.search(r"^\d\d:\d\d:\d\d epoch   2/2 .* s, ETA 0 s$", train_log, re.M)
    _, payload = load_checkpoint(out / "model.ckpt")
    assert payload["finished"] and payload["settings"]["world_size"] == ranks
    results = xr.open_zarr(out / "results.zarr")
    assert results.attrs["complete"] is True and results.attrs["world_size"] == ranks
    assert (out / "report" / "summary.txt").is_file()
    for store in ("cube.zarr", "patches.zarr"):  # the Dask stages write what `rvae run` writes
        assert_same_store(out / store, reference_run / store)
    if ranks == 1:  # the same computation as `rvae run`, stage by stage in batch jobs
        assert_same_store(out / "results.zarr", reference_run / "results.zarr", rtol=1e-5, atol=1e-6)
    else:
        # Two ranks train on the union of their batches (each rank its own ELBO noise), which one
        # process does not: the results are what one process encodes with the chain's own model.
        from pipeline.encode import encode

        encode(out / "cube.zarr", out / "patches.zarr", out / "model.ckpt", tmp_path / "one.zarr", symmetry=6,
               block=256, log=lambda line: None)
        assert_same_store(out / "results.zarr", tmp_path / "one.zarr", rtol=1e-5, atol=1e-6)
    status = rvae_cli(slurm, tmp_path, "status", "out")
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 5 and "2/2 epochs" in status.stdout
    if ranks == 1:  # submitted again: what is up to date is not submitted; the record keeps every submission
        again = rvae_cli(slurm, tmp_path, "submit", "run.yaml", *options)
        assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
        shutil.rmtree(out / "results.zarr")  # (a changed setting is refused without --overwrite, as by rvae run)
        jobs = submit_chain(slurm, tmp_path, CHAIN, *options)
        assert list(jobs) == ["encode", "report"]
        for stage, job in jobs.items():
            log = out / "slurm" / "logs" / f"{stage}.log"
            assert wait(slurm, job) == ("COMPLETED", "0"), log.read_text()[-2000:]
        record = json.loads((out / "slurm" / "manifest.json").read_text())["submissions"]
        assert len(record) == 2 and record[-1]["up_to_date"] == ["cube", "patches", "train"]
        status = rvae_cli(slurm, tmp_path, "status", "out")
        assert "train    not submitted: up to date" in status.stdout and "(submission 2;" in status.stdout


def test_a_failed_stage_cancels_the_rest_and_status_names_it(slurm, tmp_path):
    jobs = submit_chain(slurm, tmp_path, {**CHAIN, "input": "missing.npy"})
    assert wait(slurm, jobs["cube"]) == ("FAILED", "1")
    for stage in ("patches", "train", "encode", "report"):
        assert wait(slurm, jobs[stage])[0] == "CANCELLED"
    info = subprocess.run(["scontrol", "show", "job", jobs["report"]], env=slurm, capture_output=True, text=True)
    assert "Reason=DependencyNeverSatisfied" in info.stdout
    status = rvae_cli(slurm, tmp_path, "status", "out")
    assert status.returncode == 0, status.stderr
    assert re.search(r"cube +job +\d+ +FAILED", status.stdout)
    assert "stage cube failed" in status.stdout and "missing.npy" in status.stdout  # the log's tail


def test_a_preempted_training_job_requeues_itself_and_equals_an_uninterrupted_run(slurm, tmp_path):
    config = {**CHAIN, "train": {"epochs": 300, "batch_size": 16}}
    jobs = submit_chain(slurm, tmp_path, config)
    log = tmp_path / "out" / "slurm" / "logs" / "train.log"
    deadline = time.monotonic() + 180
    while not re.search(r"epoch +3/300", log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.3)
    # what --signal=B:USR1@120 sends: the batch shell alone, which passes it to the ranks
    subprocess.run(["scancel", "--batch", "--signal=USR1", jobs["train"]], env=slurm, check=True)
    for stage in ("train", "encode", "report"):
        assert wait(slurm, jobs[stage], timeout=600) == ("COMPLETED", "0"), log.read_text()[-3000:]
    text = log.read_text()
    assert "(restart 0)" in text and "(restart 1)" in text  # one log, appended across the requeue
    assert "requeueing job" in text and "resuming from" in text
    assert xr.open_zarr(tmp_path / "out" / "results.zarr").attrs["complete"] is True

    # the same training, uninterrupted, on two ranks of the same cluster
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copytree(tmp_path / "out" / "patches.zarr", ref / "patches.zarr")
    (ref / "run.yaml").write_text(yaml.safe_dump({**config, "workdir": str(ref),
                                                  "train": {**config["train"], "backend": "ddp"}}))
    done = subprocess.run(["srun", "-n", "2", "--mpi=pmix", str(Path(sys.executable).with_name("rvae")), "run",
                           str(ref / "run.yaml"), "--stage", "train"], env={**slurm, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)  # the batch jobs' threads (1 CPU a task)
    assert done.returncode == 0, done.stderr[-3000:]
    preempted, _ = load_checkpoint(tmp_path / "out" / "model.ckpt")
    uninterrupted, _ = load_checkpoint(ref / "model.ckpt")
    for (name, a), b in zip(preempted.state_dict().items(), uninterrupted.state_dict().values()):
        assert torch.equal(a, b), name


def test_dask_slurm_workers_write_the_same_patch_store_as_threads(slurm, lattice_cube, tmp_path):
    options = ["--mode", "grid", "--window", "16", "--stride", "8", "--max-samples", "none"]
    marker = tmp_path / "setup-ran"
    profile = {"name": "lab", "setup": [f"touch {marker}"], "env": {"RVAE_SITE_SEEN": "1"},
               "extra_sbatch": ["--comment=rvae"]}
    (tmp_path / "lab.yaml").write_text(yaml.safe_dump(profile))
    for kind in ("threads", "slurm"):
        site = ["--site", tmp_path / "lab.yaml"] if kind == "slurm" else []
        done = rvae_cli(slurm, tmp_path, "patches", lattice_cube, tmp_path / f"{kind}.zarr", *options, "--dask", kind,
                        *site, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same_store(tmp_path / "slurm.zarr", tmp_path / "threads.zarr", rtol=0, atol=0)
    jobs = subprocess.run(["scontrol", "show", "jobs"], env=slurm, capture_output=True, text=True).stdout
    assert "JobName=dask-worker" in jobs  # the work ran in worker jobs, which were ended with the stage
    assert "Comment=rvae" in jobs  # ... which took the profile's directives
    assert marker.exists()  # ... and ran its setup lines
    assert list((tmp_path / "slurm" / "logs").glob("dask-worker-*.out"))  # logs beside the output
    assert not list(tmp_path.glob("slurm-*.out"))
    assert not subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True).stdout.strip()


def test_a_campaign_runs_each_file_as_a_task_of_each_stage_array(slurm, tmp_path):
    from pipeline.synthetic import lattice_grains

    image = lattice_grains(size=128, seed=0)["data"].values.astype(np.float32)
    np.save(tmp_path / "good.npy", image)
    image[5, 5] = np.nan  # patches refuses it: this file's chain stops there, the other's goes on
    np.save(tmp_path / "bad.npy", image)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({k: v for k, v in CHAIN.items() if k != "synthetic"}))
    done = rvae_cli(slurm, tmp_path, "submit", "run.yaml", "--inputs", "good.npy", "bad.npy")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "slurm" / "manifest.json").read_text())["submissions"][-1]
    jobs = {entry["stage"]: entry["job_id"] for entry in manifest["stages"]}
    for stage in ("cube", "patches", "train", "encode", "report"):
        assert wait(slurm, f"{jobs[stage]}_0") == ("COMPLETED", "0"), stage
    assert wait(slurm, f"{jobs['patches']}_1") == ("FAILED", "1")
    assert wait(slurm, f"{jobs['report']}_1")[0] == "CANCELLED"
    assert xr.open_zarr(tmp_path / "out" / "good" / "results.zarr").attrs["complete"] is True
    assert not (tmp_path / "out" / "bad" / "results.zarr").exists()
    status = rvae_cli(slurm, tmp_path, "status", "out")
    assert "a campaign of 2 runs" in status.stdout and "1 COMPLETED, 1 FAILED" in status.stdout
    assert "stage patches of bad failed" in status.stdout and "NaN" in status.stdout


def test_cancel_ends_every_job_of_a_submission(slurm, tmp_path):
    jobs = submit_chain(slurm, tmp_path, {**CHAIN, "train": {"epochs": 100000, "batch_size": 16}})
    log = tmp_path / "out" / "slurm" / "logs" / "train.log"
    deadline = time.monotonic() + 180
    while "epoch" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.3)
    done = rvae_cli(slurm, tmp_path, "cancel", "out")
    assert done.returncode == 0, done.stderr
    for stage in ("train", "encode", "report"):
        assert wait(slurm, jobs[stage])[0] == "CANCELLED", stage
    status = rvae_cli(slurm, tmp_path, "status", "out")
    # a user's cancel is not a failure; and a reader that stops early gets no error
    assert "failed" not in status.stdout and "cancelled: train, encode, report" in status.stdout, status.stdout
    piped = subprocess.run(f"{shlex.quote(str(Path(sys.executable).with_name('rvae')))} status out | head -1",
                           shell=True, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=120)
    assert piped.stdout.count("\n") == 1 and "Broken pipe" not in piped.stderr and not piped.stderr.strip()
