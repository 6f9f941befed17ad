"""Fault injection: stages killed at random points and run again, a full file system, read-only
outputs and two writers of one output at once. What is guaranteed: a re-run ends with exactly
what an uninterrupted run writes, and a failure is one line that names the output."""
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from test_cli import assert_one_line_error

from models import load_checkpoint

# clusters, ranks, long training or a fresh environment: not in `make test-quick`
pytestmark = pytest.mark.slow

RVAE = str(Path(sys.executable).with_name("rvae"))
SEEDS = (0, 1, 2)


def stage_args(stage, src, out):
    """The command line of ``stage`` writing ``out`` from the inputs in ``src``."""
    return {
        "synth": ["synth", out, "--size", 1024, "--seed", 3],
        "ingest": ["ingest", src / "counts.npy", out],
        "patches": ["patches", src / "cube.zarr", out, "--mode", "grid", "--window", 16, "--stride", 2],
        "train": ["train", src / "p.zarr", out, "--epochs", 8, "--batch-size", 16, "--hidden", "32,32",
                  "--checkpoint-every", 3, "--threads", 1],
        "encode": ["encode", src / "cube.zarr", src / "p.zarr", src / "m.ckpt", out, "--block", 10],
    }[stage]


OUTPUT = {"synth": "cube.zarr", "ingest": "cube.zarr", "patches": "p.zarr", "train": "m.ckpt", "encode": "r.zarr"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Each stage's inputs, and its output of one uninterrupted run with how long that took."""
    src = tmp_path_factory.mktemp("fault-inputs")
    np.save(src / "counts.npy", np.random.default_rng(0).poisson(50, (2048, 2048)).astype(np.uint16))
    for args in (["synth", src / "cube.zarr", "--size", 160, "--seed", 4],
                 ["patches", src / "cube.zarr", src / "p.zarr", "--window", 16, "--max-samples", 300],
                 ["train", src / "p.zarr", src / "m.ckpt", "--epochs", 1, "--batch-size", 16, "--hidden", "32,32"]):
        done = subprocess.run([RVAE, *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    reference, seconds = {}, {}
    for stage, name in OUTPUT.items():
        out = tmp_path_factory.mktemp(f"reference-{stage}") / name
        proc = start_writing(stage_args(stage, src, out), out)
        start = time.monotonic()
        assert proc.wait() == 0, proc.stderr.read()
        seconds[stage] = time.monotonic() - start
        reference[stage] = out
    return src, reference, seconds


def start_writing(args, out):
    """Start ``rvae`` and return once it has started writing ``out`` (holds its lock) or ended: the
    time before that goes to imports and reading, where a kill leaves nothing to recover from."""
    proc = subprocess.Popen([RVAE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out.with_name(f".{out.name}.lock")
    while proc.poll() is None and not lock.exists():
        time.sleep(0.01)
    return proc


def same_output(stage, a, b):
    """Assert that two outputs of ``stage`` hold the same values (their provenance times aside)."""
    if stage == "train":
        (ma, pa), (mb, pb) = load_checkpoint(a), load_checkpoint(b)
        assert pa["finished"] and pb["finished"]
        for (name, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(x, y), name
        return
    da, db = xr.open_zarr(a), xr.open_zarr(b)
    assert set(da.variables) == set(db.variables)
    for name in da.variables:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    if stage == "encode":
        assert da.attrs["complete"] is True and db.attrs["complete"] is True


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stage", list(OUTPUT))
def test_a_stage_killed_at_a_random_point_then_run_again_ends_as_an_uninterrupted_run(stage, seed, inputs,
                                                                                      tmp_path):
    src, reference, seconds = inputs
    out = tmp_path / OUTPUT[stage]
    args = stage_args(stage, src, out)
    # a point early in the writing phase (its last part is publishing and exiting)
    delay = np.random.default_rng([seed, *map(ord, stage)]).uniform(0, 0.8) * seconds[stage]
    proc = start_writing(args, out)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL: no handler runs, as when a node dies
        proc.wait()
    again = subprocess.run([RVAE, *map(str, args)], capture_output=True, text=True)
    # killed after it had published a complete output, the re-run finds it there and keeps it
    assert again.returncode == 0 or "already" in again.stderr, again.stderr
    same_output(stage, out, reference[stage])
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partial output, no lock left


@contextmanager
def small_filesystem(path, size, read_only=False):
    """A tmpfs of ``size`` mounted at ``path`` (root only, as CI runs); unmounted afterwards."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.fail(f"these tests mount a small tmpfs and need root (CI runs as root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def rvae(*args):
    return subprocess.run([RVAE, *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("stage", ["synth", "ingest", "patches", "train", "encode"])
def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing_behind(stage, inputs, tmp_path, snapshot):
    src, _, _ = inputs
    before = snapshot(src)
    with small_filesystem(tmp_path / "full", "64k") as full:
        out = full / OUTPUT[stage]
        result = rvae(*stage_args(stage, src, out))
        assert_one_line_error(result, f"cannot write {str(out)!r}", "No space left on device")
        assert not list(full.glob(".*"))  # no partial output, no lock
        if stage == "encode" and out.exists():  # a results store resumes: its template may stay, unfinished
            assert xr.open_zarr(out).attrs["complete"] is False
        else:
            assert not out.exists()
    assert snapshot(src) == before  # the input is not blamed, and not touched


@pytest.mark.parametrize("stage", ["synth", "ingest", "patches", "train", "encode", "report"])
def test_a_read_only_output_is_one_line_naming_it(stage, inputs, tmp_path):
    src, reference, _ = inputs
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as ro:
        if stage == "report":
            out, args = ro / "report", ["report", reference["encode"], ro / "report"]
        else:
            out, args = ro / OUTPUT[stage], stage_args(stage, src, ro / OUTPUT[stage])
        assert_one_line_error(rvae(*args), f"cannot write {str(out)!r}", "Read-only file system")


def test_two_writers_of_one_output_at_once_leave_one_complete_store(inputs, tmp_path):
    src, reference, _ = inputs
    out = tmp_path / "r.zarr"
    args = [RVAE, *map(str, stage_args("encode", src, out))]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "being written by another rvae process" in refused or "already holds complete results" in refused
    same_output("encode", out, reference["encode"])


RUN_CONFIG = """workdir: out
dask: threads
synthetic: {size: 128, seed: 6}
patches: {window: 24}
train: {epochs: 6, batch_size: 16, checkpoint_every: 4}
encode: {symmetry: 6, block: 20}
"""


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The outputs of one uninterrupted ``rvae run`` of :data:`RUN_CONFIG`."""
    ref = tmp_path_factory.mktemp("straight-run")
    (ref / "run.yaml").write_text(RUN_CONFIG)
    straight = subprocess.run([RVAE, "run", "run.yaml"], cwd=ref, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    return ref / "out"


STAGE_OUTPUT = {"[patches]": "patches.zarr", "[train]": "model.ckpt", "[encode]": "results.zarr"}


@pytest.mark.parametrize("stop_after", list(STAGE_OUTPUT))
def test_rvae_run_continues_from_where_it_was_killed(stop_after, straight_run, tmp_path):
    (tmp_path / "run.yaml").write_text(RUN_CONFIG)

    proc = subprocess.Popen([RVAE, "run", "run.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    output = tmp_path / "out" / STAGE_OUTPUT[stop_after]
    lock = output.with_name(f".{output.name}.lock")
    for line in proc.stdout:
        if line.startswith(stop_after):
            break
    while proc.poll() is None and not lock.exists():  # the stage holds its output: it is writing
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the stage was killed"
    again = subprocess.run([RVAE, "run", "run.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "cube.zarr: up to date" in again.stdout  # the finished stages are kept, not redone
    for stage, name in (("synth", "cube.zarr"), ("patches", "patches.zarr"), ("train", "model.ckpt"),
                        ("encode", "results.zarr")):
        same_output(stage, tmp_path / "out" / name, straight_run / name)

    once_more = subprocess.run([RVAE, "run", "run.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert once_more.returncode == 0 and once_more.stdout.count("kept") == 5, once_more.stdout
    (tmp_path / "run.yaml").write_text(RUN_CONFIG.replace("window: 24", "window: 20"))
    changed = subprocess.run([RVAE, "run", "run.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert_one_line_error(changed, "patches.zarr", "already exists", "--overwrite")


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing_behind(inputs, tmp_path):
    _, reference, _ = inputs
    with small_filesystem(tmp_path / "full", "64k") as full:
        (full / "filler").write_bytes(bytes(60 * 1024))  # HDF5 crashes when the disk fills under it
        out = full / "r.hspy"
        assert_one_line_error(rvae("export", reference["encode"], out), f"cannot write {str(out)!r}", "MiB are free")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_what_rvae_run_would_keep_is_known_without_running_it(straight_run, monkeypatch):
    """rvae submit leaves out stages whose outputs are up to date: the check agrees with rvae run."""
    import yaml

    from pipeline.config import parse_config
    from pipeline.run import up_to_date

    monkeypatch.chdir(straight_run.parent)
    config = parse_config(yaml.safe_load(RUN_CONFIG))
    assert all(up_to_date(config, stage) for stage in ("cube", "patches", "train", "encode", "report"))
    assert not up_to_date(config, "train", world_size=2)  # trained on one rank, not two
    changed = parse_config(yaml.safe_load(RUN_CONFIG.replace("block: 20", "block: 40")))
    assert up_to_date(changed, "train") and not up_to_date(changed, "encode")
    changed = parse_config(yaml.safe_load(RUN_CONFIG.replace("seed: 6", "seed: 7")))
    assert not up_to_date(changed, "cube")
