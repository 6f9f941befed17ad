"""Artefacts a user can trust: nothing hostile runs, no input is replaced, provenance is checked,
a lost chunk is an error, and every failure a user can cause is one line (issue 16)."""
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from pipeline.stores import output_lock
from test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def work(tmp_path_factory, rvae):
    """Two different cubes (float and uint16), a patch store and a trained checkpoint of the first."""
    work = tmp_path_factory.mktemp("trust")
    assert rvae("synth", work / "cube.zarr", "--size", 96, "--seed", 1).returncode == 0
    assert rvae("synth", work / "other.zarr", "--size", 96, "--seed", 2).returncode == 0
    counts = (xr.open_zarr(work / "cube.zarr")["data"].values * 1000).astype(np.uint16)
    np.save(work / "counts.npy", np.tile(counts, (4, 4)))  # 384 x 384 px: several chunks once ingested
    assert rvae("ingest", work / "counts.npy", work / "counts.zarr").returncode == 0
    assert rvae("patches", work / "cube.zarr", work / "p.zarr", "--window", 16).returncode == 0
    made = rvae("train", work / "p.zarr", work / "m.ckpt", "--epochs", 1, "--batch-size", 16, "--hidden", "32,32")
    assert made.returncode == 0, made.stderr
    return work


def hostile_checkpoint(path, marker):
    """A file torch.load(weights_only=False) would execute: it creates ``marker`` when unpickled."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"config": {"image_shape": (1, 16, 16)}, "state_dict": {}, "x": Payload()}, path)


@pytest.mark.parametrize("stage", ["encode", "train", "report", "library"])
def test_a_hostile_checkpoint_is_refused_and_its_payload_never_runs(work, tmp_path, rvae, stage):
    marker, evil = tmp_path / "payload-ran", tmp_path / "evil.ckpt"
    hostile_checkpoint(evil, marker)
    if stage == "encode":
        result = rvae("encode", work / "cube.zarr", work / "p.zarr", evil, tmp_path / "r.zarr")
        assert_one_line_error(result, "refused to load", "evil.ckpt", "posix.system")
        assert not (tmp_path / "r.zarr").exists()
    elif stage == "train":  # an existing checkpoint is read to resume from
        assert_one_line_error(rvae("train", work / "p.zarr", evil, "--epochs", 1, "--batch-size", 16),
                              "refused to load", "evil.ckpt")
    elif stage == "report":  # the results name the checkpoint the manifold is decoded from
        shutil.copytree(work / "cube.zarr", tmp_path / "cube.zarr")
        assert rvae("encode", tmp_path / "cube.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr").returncode == 0
        group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r+")
        group.attrs.update(checkpoint=str(evil), checkpoint_sha256=hashlib.sha256(evil.read_bytes()).hexdigest())
        zarr.consolidate_metadata(str(tmp_path / "r.zarr"))
        result = rvae("report", tmp_path / "r.zarr", tmp_path / "report")
        assert result.returncode == 0, result.stderr
        assert "manifold skipped" in result.stdout and "refused to load" in result.stdout
        assert not (tmp_path / "report" / "manifold.png").exists()
        assert "manifold.png" not in result.stdout
    else:
        from models import load_checkpoint

        with pytest.raises(ValueError, match="refused to load .* posix.system"):
            load_checkpoint(evil)
    assert not marker.exists(), "the checkpoint's payload ran"


def test_a_checkpoint_path_that_is_a_directory_is_one_line(work, tmp_path, rvae):
    (tmp_path / "dir.ckpt").mkdir()
    assert_one_line_error(rvae("train", work / "p.zarr", tmp_path / "dir.ckpt", "--epochs", 1), "is a directory")
    assert_one_line_error(rvae("encode", work / "cube.zarr", work / "p.zarr", tmp_path / "dir.ckpt",
                               tmp_path / "r.zarr"), "is a directory")


@pytest.mark.parametrize("args, relation", [
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{w}/m.ckpt", "{w}/cube.zarr"], "is the input"),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{w}/m.ckpt", "{w}/p.zarr"], "is the input"),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{w}/m.ckpt", "{w}/m.ckpt"], "is the input"),
    (["patches", "{w}/cube.zarr", "{w}/cube.zarr"], "is the input"),
    (["patches", "{w}/cube.zarr", "{w}/cube.zarr/inner.zarr"], "lies inside the input"),
    (["patches", "{w}/cube.zarr", "{w}"], "contains the input"),
    (["ingest", "{w}/counts.npy", "{w}/counts.npy"], "is the input"),
    (["train", "{w}/p.zarr", "{w}/p.zarr"], "is the input"),
    (["report", "{w}/p.zarr", "{w}/p.zarr"], "is the input"),
])
def test_an_output_is_never_an_input_even_with_overwrite(work, rvae, snapshot, args, relation):
    before = snapshot(work)
    result = rvae(*(a.format(w=work) for a in args), "--overwrite")
    assert_one_line_error(result, relation, "an output never replaces an input")
    assert snapshot(work) == before


def test_encode_refuses_a_patch_store_cut_from_another_cube(work, tmp_path, rvae):
    result = rvae("encode", work / "other.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr")
    assert_one_line_error(result, "was cut from", "cube.zarr", "not from this cube", "other.zarr")
    assert not (tmp_path / "r.zarr").exists()
    # a copy of the right cube elsewhere is the same cube
    shutil.copytree(work / "cube.zarr", tmp_path / "copy.zarr")
    assert rvae("encode", tmp_path / "copy.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr").returncode == 0


def test_encode_refuses_a_checkpoint_trained_on_other_samples(work, tmp_path, rvae):
    # same window size, other normalisation: a model trained on another cube's patch store
    assert rvae("patches", work / "other.zarr", tmp_path / "p.zarr", "--window", 16).returncode == 0
    result = rvae("encode", work / "other.zarr", tmp_path / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr")
    assert_one_line_error(result, "was trained on samples made otherwise", "train on this patch store")


def interrupted_encode(work, out, rvae, *extra):
    """An encode killed after its first blocks (SIGKILL, as a node failure would)."""
    proc = subprocess.Popen([str(os.path.join(os.path.dirname(sys.executable), "rvae")), "encode",
                             str(work / "cube.zarr"), str(work / "p.zarr"), str(work / "m.ckpt"), str(out),
                             "--block", "20", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("encoded block"):
            proc.kill()
            break
    proc.wait()
    assert zarr.open_group(str(out)).attrs["complete"] is False


def test_a_killed_encode_resumed_with_another_cube_or_block_is_refused(work, tmp_path, rvae, snapshot):
    out = tmp_path / "r.zarr"
    interrupted_encode(work, out, rvae)
    before = snapshot(out)
    assert_one_line_error(rvae("encode", work / "other.zarr", work / "p.zarr", work / "m.ckpt", out, "--block", 20),
                          "not from this cube")
    assert_one_line_error(rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out, "--block", 50),
                          "unfinished results of a different run", "block differs")
    assert_one_line_error(rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out, "--block", 20,
                               "--symmetry", 6), "symmetry differs")
    assert snapshot(out) == before
    finished = rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out, "--block", 20)
    assert finished.returncode == 0 and "resuming:" in finished.stdout
    assert xr.open_zarr(out).attrs["complete"] is True


def test_a_lost_chunk_is_an_error_for_every_stage_that_reads_it(tmp_path, rvae, snapshot):
    cube = tmp_path / "cube.zarr"
    assert rvae("synth", cube, "--size", 300).returncode == 0  # 256-px chunks: four of them
    assert rvae("patches", cube, tmp_path / "p.zarr", "--mode", "grid", "--window", 16).returncode == 0
    trained = rvae("train", tmp_path / "p.zarr", tmp_path / "m.ckpt", "--epochs", 1, "--hidden", "32,32",
                   "--batch-size", 16)
    assert trained.returncode == 0, trained.stderr
    chunks = sorted(p for p in (cube / "data" / "c").rglob("*") if p.is_file())
    assert len(chunks) == 4
    chunks[1].unlink()
    before = snapshot(tmp_path)
    for args in (["patches", cube, tmp_path / "new.zarr", "--mode", "grid", "--window", 16],
                 ["encode", cube, tmp_path / "p.zarr", tmp_path / "m.ckpt", tmp_path / "r.zarr"],
                 ["ingest", cube, tmp_path / "copy.zarr", "--dataset", "data"]):
        assert_one_line_error(rvae(*args), "has lost chunks of 'data'", "3 of the 4 written", str(chunks[1]))
    assert snapshot(tmp_path) == before
    # the patch store's own chunks are counted too
    next(p for p in (tmp_path / "p.zarr" / "patches" / "c").rglob("*") if p.is_file()).unlink()
    assert_one_line_error(rvae("train", tmp_path / "p.zarr", tmp_path / "m2.ckpt", "--epochs", 1),
                          "patch store", "has lost chunks of 'patches'")


def counts_cube(path):
    """A uint16 cube of four chunks, every one written, compressed as ingest compresses counts
    (Blosc), so that the direct reader (pipeline.chunk_files) reads it."""
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) + 1
    blosc = zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle")
    xr.Dataset({"data": (("y", "x"), data)}).chunk(32).to_zarr(
        path, zarr_format=3, write_empty_chunks=True, encoding={"data": {"compressors": [blosc]}})
    return data


def test_an_integer_cube_read_straight_from_its_files_never_reads_a_lost_chunk_as_zeros(tmp_path):
    from pipeline.chunk_files import read_chunks
    from pipeline.stores import open_cube, record_chunks

    from pipeline.chunk_files import readable_directly

    counts_cube(tmp_path / "c.zarr")
    record_chunks(tmp_path / "c.zarr")
    assert open_cube(tmp_path / "c.zarr").values.min() == 1
    assert readable_directly(zarr.open_array(str(tmp_path / "c.zarr" / "data")))
    lost = sorted(p for p in (tmp_path / "c.zarr" / "data" / "c").rglob("*") if p.is_file())[-1]
    lost.unlink()
    with pytest.raises(ValueError, match="has lost chunks of 'data': 3 of the 4 written"):
        open_cube(tmp_path / "c.zarr")
    # and the direct reader itself, for a chunk lost after the store was opened
    with pytest.raises(FileNotFoundError, match=f"chunk {lost} is missing"):
        read_chunks(zarr.open_array(str(tmp_path / "c.zarr" / "data")), missing_is_fill=False).compute()


def test_a_never_written_chunk_still_reads_as_fill_value(tmp_path):
    """A store without the record (written elsewhere) keeps Zarr's meaning of a missing chunk."""
    from pipeline.stores import open_cube

    data = counts_cube(tmp_path / "c.zarr")
    sorted(p for p in (tmp_path / "c.zarr" / "data" / "c").rglob("*") if p.is_file())[-1].unlink()
    values = open_cube(tmp_path / "c.zarr").values
    assert (values[32:, 32:] == 0).all() and (values[:32] == data[:32]).all()


def test_a_second_writer_of_an_output_is_refused(work, tmp_path, rvae):
    out = tmp_path / "r.zarr"
    with output_lock(out):  # this process is writing it
        result = rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out)
        assert_one_line_error(result, "is being written by another rvae process", f"pid {os.getpid()}")
        assert_one_line_error(rvae("synth", out, "--size", 32), "being written by another rvae process")
    assert not out.exists()
    assert rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out).returncode == 0
    assert not list(tmp_path.glob(".*lock"))  # the lock goes with its writer


def test_leftovers_of_killed_writers_are_removed_and_a_moved_aside_output_restored(work, tmp_path, rvae):
    (tmp_path / ".p.zarr.partial-deadbeef").mkdir()  # a patches run killed while writing
    (tmp_path / ".p.zarr.partial-deadbeef" / "junk").write_text("x")
    (tmp_path / ".m.ckpt.partial-1234").write_text("half a checkpoint")
    assert rvae("patches", work / "cube.zarr", tmp_path / "p.zarr", "--window", 16).returncode == 0
    assert rvae("train", tmp_path / "p.zarr", tmp_path / "m.ckpt", "--epochs", 1, "--hidden", "32,32",
                "--batch-size", 16).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "p.zarr"]
    # killed between moving the old output aside and publishing the new one: the old one comes back
    os.replace(tmp_path / "p.zarr", tmp_path / ".p.zarr.old-cafe")
    result = rvae("patches", work / "cube.zarr", tmp_path / "p.zarr", "--window", 16)
    assert_one_line_error(result, "already exists", "--overwrite")
    assert (tmp_path / "p.zarr" / "zarr.json").exists() and not (tmp_path / ".p.zarr.old-cafe").exists()


def test_a_cube_passed_as_the_patch_store_is_one_line(work, tmp_path, rvae):
    result = rvae("encode", work / "cube.zarr", work / "cube.zarr", work / "m.ckpt", tmp_path / "r.zarr")
    assert_one_line_error(result, "is not a patch store", "rvae patches")
    result = rvae("encode", work / "cube.zarr", work / "other.zarr", work / "m.ckpt", tmp_path / "r.zarr")
    assert_one_line_error(result, "other.zarr", "is not a patch store")


def test_an_existing_directory_that_is_not_a_results_store_is_kept(work, tmp_path, rvae, snapshot):
    (tmp_path / "r.zarr").mkdir()
    (tmp_path / "r.zarr" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "r.zarr")
    result = rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr")
    assert_one_line_error(result, "exists and is not a results store", "--overwrite")
    assert snapshot(tmp_path / "r.zarr") == before


def test_running_out_of_memory_is_one_line(tmp_path, rvae):
    result = rvae("synth", tmp_path / "huge.zarr", "--size", 100_000_000)
    assert_one_line_error(result, "out of memory")
    assert not (tmp_path / "huge.zarr").exists()


def test_errors_are_described_in_one_line_and_a_bug_has_its_own_status():
    from pipeline.cli import describe_error

    message, status = describe_error(KeyError("block_done"))
    assert status == 70 and "internal error: KeyError" in message and "RVAE_TRACEBACK=1" in message
    assert describe_error(PermissionError(13, "Permission denied", "/x/y")) == ("Permission denied: '/x/y'", 1)
    assert describe_error(OSError(28, "cannot write 'out': No space left on device")) == \
        ("cannot write 'out': No space left on device", 1)
