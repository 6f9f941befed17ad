"""Data-parallel training with real ranks: torch DDP (torchrun) and Horovod (horovodrun with Gloo, mpirun with MPI)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import build_model, load_checkpoint
from pipeline.dataset import ShardedPatchReader
from pipeline.distributed import ClusterEnvironment, NoStrategy
from pipeline.patches import write_patches
from pipeline.train import KL_WARMUP, kl_weight, make_optimizer, resolve_model_options

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RANK_JOB = Path(__file__).with_name("rank_job.py")
SEED, BATCH, EPOCHS = 3, 16, 2


@pytest.fixture(scope="module")
def small_patches(lattice_cube, tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "patches.zarr"
    write_patches(lattice_cube, path, mode="points", window=16, max_samples=256, progress=False)
    return path


@pytest.fixture(scope="module")
def spectra_patches(tmp_path_factory):
    """A spectra patch store (256 spectra of 64 channels) of a synthetic spectrum image."""
    from pipeline.synthetic import write_synthetic

    work = tmp_path_factory.mktemp("dist-spectra")
    write_synthetic(work / "cube.zarr", kind="spectra", size=16, channels=64, log=lambda line: None)
    write_patches(work / "cube.zarr", work / "patches.zarr", mode="spectra", progress=False)
    return work / "patches.zarr"


def test_a_start_that_leaves_the_angle_undetermined_is_trained_again_from_the_next(tmp_path):
    """Windows of noise hold no orientation: the encoder's angle keeps about its prior's width, so
    training goes on from the next start; the checkpoint records the starts in the order tried."""
    import numpy as np

    from pipeline.ingest import ingest
    from pipeline.train import UNDETERMINED_DEG, train

    np.save(tmp_path / "noise.npy", np.random.default_rng(0).normal(size=(96, 96)).astype(np.float32))
    ingest(tmp_path / "noise.npy", tmp_path / "cube.zarr", progress=False)
    write_patches(tmp_path / "cube.zarr", tmp_path / "patches.zarr", mode="grid", window=16, stride=8,
                  progress=False)
    lines = []
    train(tmp_path / "patches.zarr", tmp_path / "model.ckpt", epochs=2, batch_size=16, restarts=2,
          model_options={"hidden": [32, 32]}, log=lines.append)
    again = [line for line in lines if "leaves the angle undetermined" in line]
    assert len(again) == 1, lines  # after the second (last) start, none is left to try
    spread = float(re.search(r"mean posterior std (\d+) deg", again[0]).group(1))
    assert spread > UNDETERMINED_DEG
    _, payload = load_checkpoint(tmp_path / "model.ckpt")
    assert payload["finished"] and len(payload["start_order"]) == 2
    assert payload["start_seed"] == payload["start_order"][1] and f"seed {payload['start_seed']}" in again[0]


LAUNCHERS = {  # how each backend's ranks are started: Horovod over Gloo (horovodrun) and over MPI (mpirun)
    "torchrun": lambda ranks: [str(BIN / "torchrun"), "--nproc-per-node", str(ranks), "--master-port", "29641"],
    "horovodrun": lambda ranks: [str(BIN / "horovodrun"), "-np", str(ranks), "--gloo", sys.executable],
    "mpirun": lambda ranks: [str(BIN / "mpirun"), "-np", str(ranks), "--oversubscribe", sys.executable],
}


def launch(backend, launcher, patches, out, ranks=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    job = [str(RANK_JOB), str(patches), str(out), backend, str(EPOCHS), str(BATCH)]
    return subprocess.run([*LAUNCHERS[launcher](ranks), *job], capture_output=True, text=True, env=env, timeout=600)


def reference_on_union(patches):
    """One process, each step on the union of both ranks' batches, each rank's ELBO noise kept apart."""
    torch.set_num_threads(1)
    readers = [ShardedPatchReader(patches, batch_size=BATCH, rank=r, world_size=2, seed=SEED) for r in range(2)]
    torch.manual_seed(SEED)
    options = resolve_model_options(readers[0].spec, {"hidden": (64, 64)})  # an rVAE, or a shift-VAE for spectra
    model = build_model({"image_shape": readers[0].sample_shape, **options})
    optimizer = make_optimizer(model, 1e-3)
    with torch.no_grad():
        model.loss(torch.zeros(2, *readers[0].sample_shape))
    rng = []
    for r in range(2):
        torch.manual_seed(SEED * 1_000_003 + r + 1)
        rng.append(torch.get_rng_state())
    steps = readers[0].steps_per_epoch(1)
    for epoch in range(1, EPOCHS + 1):
        for step, shards in enumerate(zip(*(reader.batches(epoch) for reader in readers))):
            model.kl_weight.fill_(kl_weight((epoch - 1) * steps + step, EPOCHS * steps, KL_WARMUP))
            losses = []
            for r, batch in enumerate(shards):
                torch.set_rng_state(rng[r])
                losses.append(model.loss(batch))
                rng[r] = torch.get_rng_state()
            optimizer.zero_grad()
            torch.stack(losses).mean().backward()
            optimizer.step()
    return model.state_dict()


def read_until(proc, text):
    """Read ``proc``'s output up to the first line containing ``text``; False if it ends first."""
    for line in proc.stdout:
        if text in line:
            return True
    return False


def horovod_available():
    return subprocess.run([sys.executable, "-c", "import horovod.torch"], capture_output=True).returncode == 0


@pytest.mark.parametrize("backend, launcher", [("ddp", "torchrun"), ("horovod", "horovodrun"), ("horovod", "mpirun")])
def test_two_ranks_equal_one_rank_on_the_union_of_their_batches(backend, launcher, small_patches, tmp_path):
    if backend == "horovod":
        assert horovod_available(), "Horovod is not built: run `make horovod` (CI does)"
    result = launch(backend, launcher, small_patches, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 0 of 2 done" in result.stdout and "rank 1 of 2 done" in result.stdout
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # identical on both ranks
    reference = reference_on_union(small_patches)
    for name, value in reference.items():
        torch.testing.assert_close(rank0[name], value, atol=2e-5, rtol=1e-4, msg=name)
    _, payload = load_checkpoint(tmp_path / "model.ckpt")
    assert payload["finished"] and payload["settings"]["world_size"] == 2


def test_two_ranks_train_a_shift_vae_as_one_rank_on_the_union_of_their_batches(spectra_patches, tmp_path):
    result = launch("ddp", "torchrun", spectra_patches, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    for name, value in reference_on_union(spectra_patches).items():
        torch.testing.assert_close(rank0[name], value, atol=2e-5, rtol=1e-4, msg=name)
    model, payload = load_checkpoint(tmp_path / "model.ckpt")
    assert model.kind == "spectrum" and payload["settings"]["world_size"] == 2


def test_sigterm_mid_epoch_then_restart_equals_an_uninterrupted_run(small_patches, tmp_path):
    args = [str(BIN / "rvae"), "train", str(small_patches)]
    # with restarts: the resumed run trains on from the start the first one chose, without trying again
    options = ["--epochs", "4", "--batch-size", "8", "--threads", "1", "--hidden", "64,64", "--restarts", "2"]
    straight = subprocess.run([*args, str(tmp_path / "straight.ckpt"), *options], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    stopped = tmp_path / "stopped.ckpt"
    proc = subprocess.Popen([*args, str(stopped), *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # epoch 1 is done: a signal from now on stops the run inside epoch 2 or later, never before it
    # (the ranks read their vote on it a step after it arrives), which the checkpoint's step proves
    assert read_until(proc, "epoch   1/4")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "preempted" in err and "run the same command again to resume" in err
    _, payload = load_checkpoint(stopped)
    assert not payload["finished"] and (payload["epoch"], payload["step"]) > (2, 0)

    resumed = subprocess.run([*args, str(stopped), *options], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "restarts:" not in resumed.stdout
    tried = next(line for line in straight.stdout.splitlines() if line.startswith("restarts:"))
    scores = {int(seed): float(loss) for loss, seed in re.findall(r"(-?[\d.]+) \(seed (\d+)\)", tried)}
    chosen = tried.split("training on from seed ")[1].split()[0]
    assert len(scores) == 2 and int(chosen) == min(scores, key=scores.get), tried
    # both trained on from the chosen start (and on from the next one, where a start left the angle undetermined)
    finished = [load_checkpoint(path)[1] for path in (stopped, tmp_path / "straight.ckpt")]
    assert finished[0]["start_order"] == finished[1]["start_order"] == sorted(scores, key=scores.get)
    assert finished[0]["start_seed"] == finished[1]["start_seed"]
    a, b = load_checkpoint(tmp_path / "straight.ckpt")[0], load_checkpoint(stopped)[0]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_a_dead_rank_fails_the_job_quickly(small_patches, tmp_path):
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", "29642", "-m", "pipeline.cli",
               "train", str(small_patches), str(tmp_path / "m.ckpt"), "--backend", "ddp", "--epochs", "200",
               "--batch-size", "8", "--threads", "1", "--timeout", "30"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert read_until(proc, "epoch   1/200")
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    workers[1].kill()
    start = time.monotonic()
    proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.monotonic() - start < 60


@pytest.mark.parametrize("environ, expected", [
    ({}, ClusterEnvironment(0, 1, 0, "single process")),
    ({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1"}, ClusterEnvironment(3, 8, 1, "srun")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}, ClusterEnvironment(0, 1, 0, "single process")),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     ClusterEnvironment(1, 2, 1, "mpirun")),
    ({"RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1",
      "SLURM_LOCALID": "0"}, ClusterEnvironment(5, 6, 1, "torchrun")),
])
def test_cluster_environment_detection(environ, expected):
    assert ClusterEnvironment.detect(environ) == expected


def test_backend_none_refuses_a_multi_rank_launch():
    strategy = NoStrategy(ClusterEnvironment(0, 2, 0, "srun"))
    with pytest.raises(ValueError, match="launched as 2 ranks by srun.*--backend ddp or --backend horovod"):
        strategy.setup()


def test_sharded_reader_gives_ranks_disjoint_samples(small_patches):
    import zarr

    from pipeline.windows import WindowSpec

    store = zarr.open_group(str(small_patches))
    data = WindowSpec.from_attrs(dict(store.attrs)).normalise(store["patches"][:])
    seen = []
    for r in range(2):
        reader = ShardedPatchReader(small_patches, batch_size=BATCH, rank=r, world_size=2, seed=SEED)
        batches = list(reader.batches(1))
        assert len(batches) == reader.steps_per_epoch(1) > 0
        seen.append({data_index(data, row) for batch in batches for row in batch.numpy()})
    assert not seen[0] & seen[1]
    assert len(seen[0]) + len(seen[1]) >= 0.8 * len(data)


def data_index(data, row):
    import numpy as np

    return int(np.flatnonzero((data == row).all(axis=(1, 2, 3)))[0])


def test_reading_the_next_epoch_ahead_changes_no_batch(small_patches):
    plain = ShardedPatchReader(small_patches, batch_size=BATCH, rank=1, world_size=2, seed=SEED)
    ahead = ShardedPatchReader(small_patches, batch_size=BATCH, rank=1, world_size=2, seed=SEED)
    for epoch in (1, 2, 3):
        expected, got = list(plain.batches(epoch)), list(ahead.batches(epoch, last_epoch=3))
        assert len(got) == len(expected) > 0
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
        assert (ahead._ahead.epoch if ahead._ahead else None) == (epoch + 1 if epoch < 3 else None)


def test_batches_spanning_shuffle_groups_keep_the_samples_in_order(small_patches):
    # One read unit (32 samples) per shuffle group and 24 per batch: most batches span two groups.
    one_by_one, spanning = (ShardedPatchReader(small_patches, batch_size=size, rank=0, world_size=2, seed=SEED,
                                               buffer_units=1) for size in (1, 24))
    order = torch.cat(list(one_by_one.batches(1)))
    batches = list(spanning.batches(1))
    assert len(batches) == spanning.steps_per_epoch(1) == len(order) // 24 > 1
    assert torch.equal(torch.cat(batches), order[:24 * len(batches)])


RESUME_OPTIONS = ["--epochs", "4", "--batch-size", "8", "--threads", "1", "--hidden", "64,64", "--timeout", "60",
                  "--restarts", "2"]  # two starts tried on both ranks (re-wrapped for DDP and Horovod each time)


def rvae_ranks(backend, launcher, checkpoint, patches):
    """The command line of ``rvae train`` on 2 ranks under ``launcher``."""
    if launcher == "torchrun":
        start = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", "29643"]
    else:
        start = LAUNCHERS[launcher](2)
    return [*start, "-m", "pipeline.cli", "train", str(patches), str(checkpoint), "--backend", backend, *RESUME_OPTIONS]


@pytest.mark.parametrize("backend, launcher", [("ddp", "torchrun"), ("horovod", "mpirun")])
def test_two_ranks_preempted_then_resumed_equal_an_uninterrupted_two_rank_run(backend, launcher, small_patches,
                                                                                tmp_path):
    """Every rank stops at the same step on one rank's SIGUSR1; the resumed run continues with the
    optimizer's state as saved (Horovod's DistributedOptimizer would start Adam afresh)."""
    import psutil

    if backend == "horovod":
        assert horovod_available(), "Horovod is not built: run `make horovod` (CI does)"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    straight = subprocess.run(rvae_ranks(backend, launcher, tmp_path / "straight.ckpt", small_patches),
                              capture_output=True, text=True, env=env, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    stopped = tmp_path / "stopped.ckpt"
    proc = subprocess.Popen(rvae_ranks(backend, launcher, stopped, small_patches), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert read_until(proc, "epoch   1/4"), proc.stderr.read()[-3000:]  # the ranks are inside epoch 2 or later
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "pipeline.cli" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[1].send_signal(signal.SIGUSR1)  # one rank only: the others learn of it through the vote
    _, err = proc.communicate(timeout=120)
    # srun and mpirun pass the ranks' status 75 on; torchrun's agent reports any failed worker as 1
    assert proc.returncode == (1 if launcher == "torchrun" else 75), err[-3000:]
    assert "preempted" in err
    _, payload = load_checkpoint(stopped)
    assert not payload["finished"] and (payload["epoch"], payload["step"]) > (2, 0)

    resumed = subprocess.run(rvae_ranks(backend, launcher, stopped, small_patches), capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    (a, straight_payload), (b, resumed_payload) = load_checkpoint(tmp_path / "straight.ckpt"), load_checkpoint(stopped)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=name)
    steps = [next(iter(p["optimizer"]["state"].values()))["step"] for p in (straight_payload, resumed_payload)]
    assert steps[0] == steps[1]  # Adam's step count carried across the restart
