"""Artefacts a user can trust: nothing hostile runs, no input is replaced, provenance is checked,
a lost chunk is an error, and every failure a user can cause is one line (issues 16 and 25)."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr
from test_cli import assert_one_line_error

from pipeline.stores import output_lock


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
@pytest.mark.slow  # several rvae processes: not in `make test-quick`
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
        encoded = rvae("encode", tmp_path / "cube.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr")
        assert encoded.returncode == 0
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


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_encode_refuses_a_patch_store_cut_from_another_cube(work, tmp_path, rvae):
    result = rvae("encode", work / "other.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr")
    assert_one_line_error(result, "was cut from", "cube.zarr", "not from this cube", "other.zarr")
    assert not (tmp_path / "r.zarr").exists()
    # a copy of the right cube elsewhere is the same cube
    shutil.copytree(work / "cube.zarr", tmp_path / "copy.zarr")
    assert rvae("encode", tmp_path / "copy.zarr", work / "p.zarr", work / "m.ckpt", tmp_path / "r.zarr").returncode == 0


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
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


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
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


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
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


def counts_cube(path, side=64):
    """A uint16 cube of (side / 32)^2 chunks, every one written, compressed as ingest compresses
    counts (Blosc and a checksum), so that the direct reader (pipeline.chunk_files) reads it."""
    from pipeline.compression import cube_codecs

    data = np.arange(side * side, dtype=np.uint16).reshape(side, side) + 1
    xr.Dataset({"data": (("y", "x"), data)}).chunk(32).to_zarr(
        path, zarr_format=3, write_empty_chunks=True, encoding={"data": {"compressors": cube_codecs(data.dtype)}})
    return data


def test_an_integer_cube_read_straight_from_its_files_never_reads_a_lost_chunk_as_zeros(tmp_path):
    from pipeline.chunk_files import read_chunks, readable_directly
    from pipeline.stores import open_cube, record_chunks

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


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_a_second_writer_of_an_output_is_refused(work, tmp_path, rvae):
    out = tmp_path / "r.zarr"
    with output_lock(out):  # this process is writing it
        result = rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out)
        assert_one_line_error(result, "is being written by another rvae process", f"pid {os.getpid()}")
        assert_one_line_error(rvae("synth", out, "--size", 32), "being written by another rvae process")
    assert not out.exists()
    assert rvae("encode", work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out).returncode == 0
    assert not list(tmp_path.glob(".*lock"))  # the lock goes with its writer


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
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


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
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


# -- batch scripts (issue 25): a value handed to rvae submit runs nothing -------------------------------------

HOSTILE = ["a\ntouch {m}", "a\rtouch {m}", "a;touch${{IFS}}{m}", "$(touch${{IFS}}{m})", "`touch${{IFS}}{m}`",
           "a';touch${{IFS}}{m};'", 'a";touch${{IFS}}{m};"', "a touch {m}", "${{X:-$(touch${{IFS}}{m})}}"]
SITE_FIELDS = ["account", "partition", "qos", "constraint", "cpu_account", "cpu_partition", "cpu_qos",
               "cpu_constraint", "gpu_bind", "cpu_bind", "mpi", "mem", "mail_type", "mail_user", "reservation",
               "extra_sbatch", "env value", "env key", "workdir"]


def stand_ins(folder):
    """``srun`` that runs its command (options dropped), ``scontrol`` that does nothing, ``rvae``
    that records its arguments: what a batch script runs, without a cluster."""
    folder.mkdir()
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    (folder / "scontrol").write_text("#!/bin/bash\n")
    (folder / "rvae").write_text('#!/bin/bash\nprintf "%s\\n" "$@" >> "$RVAE_ARGS"\n')
    for name in ("srun", "scontrol", "rvae"):
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.parametrize("field", SITE_FIELDS)
def test_hostile_values_in_a_profile_or_config_are_refused_or_run_nothing(tmp_path, field):
    from pipeline.batch_scripts import render
    from pipeline.config import RunConfig
    from pipeline.manifest import submission_paths
    from pipeline.sites import load_site
    from pipeline.submit import prepare, stages_of

    bin_dir, marker = stand_ins(tmp_path / "bin"), tmp_path / "INJECTED"
    refused = ran = 0
    for value in (v.format(m=marker) for v in HOSTILE):
        profile, workdir = {"name": "hostile", "setup": ["true"], "tasks_per_node": 2}, tmp_path / "run"
        if field == "env value":
            profile["env"] = {"X": value}
        elif field == "env key":
            profile["env"] = {value: "1"}
        elif field == "extra_sbatch":
            profile["extra_sbatch"] = [f"--comment={value}"]
        elif field == "workdir":
            workdir = tmp_path / value
        else:
            profile[field] = value
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(profile))
        try:
            site = load_site(tmp_path / "site.yaml")
            config = prepare(RunConfig(workdir=workdir), site)
            scripts = {stage: render(stage, site, submission_paths(config.workdir)) for stage in stages_of(config)}
        except ValueError as err:
            assert "\n" not in str(err) and (field.split()[0] in str(err) or "workdir" in str(err)), str(err)
            refused += 1
            continue
        for stage, text in scripts.items():
            args = tmp_path / "args.txt"
            args.unlink(missing_ok=True)
            environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RVAE_ARGS": str(args),
                           "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1"}
            done = subprocess.run(["bash", "-c", text], env=environment, capture_output=True, text=True, timeout=30)
            assert not marker.exists(), f"{field}={value!r}: the {stage} script ran it\n{text}"
            assert done.returncode == 0, done.stderr
            # rvae got the configuration's path as one argument, whatever it holds
            assert args.read_text().splitlines() == ["run", str(submission_paths(config.workdir)["config"]),
                                                     "--stage", stage]
        ran += 1
    assert refused + ran == len(HOSTILE) and (refused > 0 or field in ("env value", "workdir"))


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m["stages"][0].pop("job_id"), "job_id"),
    (lambda m: m["stages"][0].update(job_id="--me"), "job_id"),
    (lambda m: m["stages"][0].update(logs=["/etc/shadow"]), "outside the submission's folder"),
    (lambda m: m.update(configs=[]), "configs"),
    (lambda m: m.clear(), "configs"),
])
@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_a_malformed_or_hostile_submission_record_is_one_line(tmp_path, rvae, edit, fragment):
    import json

    folder = tmp_path / "run" / "slurm"
    (folder / "logs").mkdir(parents=True)
    record = {"site": "generic", "submitted": "2026-12-04T00:00:00", "configs": [str(folder / "run.yaml")],
              "stages": [{"stage": "cube", "job_id": "12", "script": str(folder / "cube.sbatch"),
                          "logs": [str(folder / "logs" / "cube.log")]}]}
    edit(record)
    (folder / "manifest.json").write_text(json.dumps(record))
    for command in ("status", "cancel"):
        assert_one_line_error(rvae(command, tmp_path / "run"), "manifest.json", fragment)
    (folder / "manifest.json").write_bytes(b"\xff\xfe not json")
    assert_one_line_error(rvae("status", tmp_path / "run"), "is not a submission record")


# -- results that cannot lie (issue 25) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(work, tmp_path_factory):
    """Complete results of the work fixture's model, in 4 blocks (read-only: tests copy it)."""
    from pipeline.encode import encode

    out = tmp_path_factory.mktemp("results") / "r.zarr"
    encode(work / "cube.zarr", work / "p.zarr", work / "m.ckpt", out, block=20, log=lambda line: None)
    return out


def a_copy(store, tmp_path, name="r.zarr"):
    shutil.copytree(store, tmp_path / name)
    return tmp_path / name


def test_finished_results_record_their_chunks_and_world_size(results):
    attrs = xr.open_zarr(results).attrs
    assert attrs["complete"] is True and attrs["world_size"] == 1
    assert attrs["chunks_written"]["angle"] == 4 and attrs["chunks_written"]["z"] == 4


@pytest.mark.parametrize("damage, fragment", [
    ("delete an angle chunk", "has lost chunks of 'angle': 3 of the 4 written"),
    ("edit complete into an unfinished store", "says it is complete, but only 3 of 4 blocks"),
    ("random bytes in a chunk", "is damaged (its CRC-32C does not match"),
    ("complete set false", "is unfinished: 4 of 4 blocks written"),
    ("a cube given as results", "is not a results store"),
])
@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_report_and_export_refuse_results_that_are_not_whole(results, work, tmp_path, rvae, damage, fragment):
    store = work / "cube.zarr" if damage == "a cube given as results" else a_copy(results, tmp_path)
    group = zarr.open_group(str(store), mode="r+")
    if damage == "delete an angle chunk":
        (store / "angle" / "c" / "1").unlink()
    elif damage == "edit complete into an unfinished store":
        group["progress/block_done"][2] = 0
    elif damage == "random bytes in a chunk":
        chunk = store / "z" / "c" / "0" / "1"
        chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    elif damage == "complete set false":
        group.attrs["complete"] = False
    assert_one_line_error(rvae("report", store, tmp_path / "report"), fragment)
    assert_one_line_error(rvae("export", store, tmp_path / "r.hspy"), fragment)
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob("*.hspy*"))


def test_the_accessor_refuses_unfinished_results_and_gaps(results, tmp_path):
    import pipeline  # noqa: F401  (ds.rvae)

    whole = xr.open_zarr(results)
    assert np.isfinite(whole.rvae.circular_mean())
    gap = a_copy(results, tmp_path)
    (gap / "angle" / "c" / "1").unlink()
    with pytest.raises(ValueError, match="values of 'angle' are missing"):
        xr.open_zarr(gap).rvae.circular_mean()
    with pytest.raises(ValueError, match="has lost chunks of 'angle'"):
        pipeline.open_results(gap)
    unfinished = whole.assign_attrs(complete=False)
    for call in (lambda ds: ds.rvae.circular_std(), lambda ds: ds.rvae.domains(2), lambda ds: ds.rvae.manifold()):
        with pytest.raises(ValueError, match="unfinished"):
            call(unfinished)
    for call, fragment in ((lambda ds: ds.rvae.domains(0), "an integer >= 1"),
                           (lambda ds: ds.rvae.manifold(n=0), "an integer >= 1"),
                           (lambda ds: ds.rvae.circular_mean(by=xr.DataArray(np.zeros(3), dims="sample")),
                            "by= must be a DataArray of labels")):
        with pytest.raises(ValueError, match=fragment):
            call(whole)


def test_report_refuses_all_nan_angles(results, tmp_path, rvae):
    store = a_copy(results, tmp_path)
    group = zarr.open_group(str(store), mode="r+")
    group["angle"].with_config({"write_empty_chunks": True})[:] = np.nan  # as a model that diverged writes them
    assert_one_line_error(rvae("report", store, tmp_path / "report"), "values of 'angle' are missing")


@pytest.mark.parametrize("named", ["/dev/zero", "fifo"])
@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_report_never_hangs_on_the_checkpoint_the_results_name(results, tmp_path, rvae, named):
    store = a_copy(results, tmp_path)
    if named == "fifo":
        os.mkfifo(tmp_path / "fifo")
        named = str(tmp_path / "fifo")
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["checkpoint"] = named
    zarr.consolidate_metadata(str(store))
    done = rvae("report", store, tmp_path / "report", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "manifold skipped" in done.stdout and "is not a regular file" in done.stdout


def test_a_damaged_patch_chunk_is_named_and_never_trained_on(work, tmp_path, rvae):
    store = a_copy(work / "p.zarr", tmp_path, "p.zarr")
    chunk = next(p for p in (store / "patches" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[100:140] = bytes(40)  # 40 zeroed bytes: LZ4 alone may decode them without a word
    chunk.write_bytes(bytes(data))
    assert_one_line_error(rvae("train", store, tmp_path / "m.ckpt", "--epochs", 1, "--batch-size", 16),
                          f"chunk {chunk}", "is damaged")
    assert not (tmp_path / "m.ckpt").exists()


def test_an_integer_cube_read_straight_from_its_files_checks_each_chunk(tmp_path, rvae):
    from pipeline.stores import record_chunks

    cube = tmp_path / "counts.zarr"
    counts_cube(cube)  # uint16: read by pipeline.chunk_files
    record_chunks(cube)
    chunk = sorted(p for p in (cube / "data" / "c").rglob("*") if p.is_file())[2]
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert_one_line_error(rvae("patches", cube, tmp_path / "p.zarr", "--mode", "grid", "--window", 16),
                          "is damaged")


def test_the_fingerprint_covers_every_chunk_through_its_checksum(tmp_path):
    from pipeline.compression import cube_codecs
    from pipeline.provenance import SAMPLED_CHUNKS, store_fingerprint

    cube = tmp_path / "counts.zarr"  # incompressible counts: a chunk's size does not change with its values
    data = np.random.default_rng(0).integers(0, 2**16, (128, 128), dtype=np.uint16)
    xr.Dataset({"data": (("y", "x"), data)}).chunk(32).to_zarr(
        cube, zarr_format=3, encoding={"data": {"compressors": cube_codecs(data.dtype)}})
    before = store_fingerprint(cube, "data")
    chunks = sorted((p for p in (cube / "data").rglob("*") if p.is_file() and p.name != "zarr.json"), key=str)
    assert len(chunks) > SAMPLED_CHUNKS
    # rewrite, at the same size, a chunk the sampling would not read: another value, a valid checksum
    array = zarr.open_array(str(cube / "data"), mode="r+")
    unsampled = next(i for i in range(len(chunks)) if i % max(1, len(chunks) // SAMPLED_CHUNKS))
    index = tuple(int(part) for part in chunks[unsampled].relative_to(cube / "data" / "c").parts)
    region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunks))
    values = array[region]
    values.flat[0] ^= 1
    size = chunks[unsampled].stat().st_size
    array[region] = values
    assert chunks[unsampled].stat().st_size == size
    assert store_fingerprint(cube, "data") != before


def test_a_huge_model_config_in_a_checkpoint_allocates_nothing(work, tmp_path):
    import resource

    from models import load_checkpoint

    _, payload = load_checkpoint(work / "m.ckpt")
    payload["config"]["hidden"] = (2**20, 2**20)  # 4 TiB of decoder weights, were they allocated
    torch.save(payload, tmp_path / "huge.ckpt")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="weights do not fit its model config"):
        load_checkpoint(tmp_path / "huge.ckpt")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_window_auto_finds_no_lattice_in_noise(tmp_path, rvae):
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).uniform(size=(256, 256)).astype(np.float32))
    assert rvae("ingest", tmp_path / "noise.npy", tmp_path / "noise.zarr").returncode == 0
    assert_one_line_error(rvae("patches", tmp_path / "noise.zarr", tmp_path / "p.zarr"),
                          "--window auto found no lattice", "over the background", "--window 32")


def test_running_out_of_threads_is_the_users_limit_not_the_store():
    from pipeline.cli import describe_error
    from pipeline.stores import reading

    limit = RuntimeError("can't start new thread")
    with pytest.raises(RuntimeError, match="can't start new thread"):
        with reading("p.zarr", "patch store"):  # not blamed on the store
            raise limit
    message, status = describe_error(limit)
    assert status == 1 and message.startswith("out of memory or threads") and "ulimit" in message


@pytest.mark.parametrize("args, fragments", [
    (["train", "{w}/p.zarr", "{t}/m.ckpt", "--lr", "inf"], ["lr: Input should be a finite number"]),
    (["train", "{w}/p.zarr", "{t}/m.ckpt", "--hidden", "0"], ["hidden.0: Input should be greater than or equal to 1"]),
    (["synth", "{t}/c.zarr", "--drift", "inf"], ["drift: Input should be a finite number"]),
    (["synth", "{t}/c.zarr", "--pixel-size", "inf"], ["pixel_size: Input should be a finite number"]),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{w}/m.ckpt", "{t}/r.zarr", "--symmetry", "100000"],
     ["symmetry: Input should be less than or equal to 24"]),
    (["ingest", "{t}/stack.npy", "{t}/c.zarr", "--dims", "y,x,y"], ["--dims names an axis twice"]),
    (["ingest", "{t}/empty.npy", "{t}/c.zarr"], ["shape (0, 64)", "none of them empty"]),
    (["ingest", "{t}/scalar.npy", "{t}/c.zarr"], ["shape ()", "at least 2 axes"]),
    (["run", "{t}/latin1.yaml"], ["latin1.yaml: not UTF-8 text"]),
    (["run", "{t}/bools.yaml"], ["train.epochs: expected a number or a word, not true/false (got True)"]),
    (["run", "{t}/yes.yaml"], ["encode.refine: expected true or false (got 'yes')"]),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{t}/empty.ckpt", "{t}/r.zarr"], ["is empty (0 bytes)"]),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{t}/random.ckpt", "{t}/r.zarr"],
     ["is not a readable rvae checkpoint", "written by rvae train"]),
])
def test_lenient_or_unclear_input_is_one_line_and_writes_nothing(work, tmp_path, rvae, args, fragments):
    np.save(tmp_path / "stack.npy", np.zeros((2, 8, 8), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 64), np.float32))
    np.save(tmp_path / "scalar.npy", np.float32(3))
    (tmp_path / "latin1.yaml").write_bytes("workdir: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "bools.yaml").write_text("train:\n  epochs: true\n")
    (tmp_path / "yes.yaml").write_text("encode:\n  refine: 'yes'\n")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(1).bytes(4096))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(rvae(*(a.format(w=work, t=tmp_path) for a in args)), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_report_is_finished_only_once_its_summary_is_written(results, tmp_path):
    from pipeline.report import write_report

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.ckpt"))  # a path that is not UTF-8
    shutil.copy(zarr.open_group(str(results)).attrs["checkpoint"], odd)
    store = a_copy(results, tmp_path)
    zarr.open_group(str(store), mode="r+").attrs["checkpoint"] = str(odd)  # the summary names it
    report = write_report(store, tmp_path / "report", log=lambda line: None)[-1]
    assert report.name == "summary.txt" and "caf\\udce9" in report.read_text()
    assert not list((tmp_path / "report").glob(".*"))
