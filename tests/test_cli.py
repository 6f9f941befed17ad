"""The command line as a user meets it: one-line errors, non-zero exits, outputs left alone."""
import pytest
import xarray as xr


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rvae "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_stage_by_stage_cli(tmp_path, rvae):
    assert rvae("synth", tmp_path / "cube.zarr", "--size", 160, "--seed", 4).returncode == 0
    made = rvae("patches", tmp_path / "cube.zarr", tmp_path / "p.zarr", "--window", 24, "--max-samples", 200)
    assert made.returncode == 0 and "200 samples of 24x24" in made.stdout
    trained = rvae("train", tmp_path / "p.zarr", tmp_path / "m.ckpt", "--epochs", 2, "--hidden", "32,32",
                   "--decoder", "spatial", "--backend", "none", "--threads", "none")
    assert trained.returncode == 0 and "epoch   2/2" in trained.stdout and "img/s" in trained.stdout
    assert rvae("encode", tmp_path / "cube.zarr", tmp_path / "p.zarr", tmp_path / "m.ckpt", tmp_path / "r.zarr",
                "--symmetry", 6).returncode == 0
    reported = rvae("report", tmp_path / "r.zarr", tmp_path / "report")
    assert reported.returncode == 0
    for name in ("rotation_map", "latent_maps", "latent_scatter", "manifold"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 10_000
    assert "rotation:" in (tmp_path / "report" / "summary.txt").read_text()
    assert xr.open_zarr(tmp_path / "r.zarr").attrs["symmetry"] == 6


@pytest.fixture(scope="module")
def stores(tmp_path_factory, rvae):
    """A cube, a 4D cube and a patch store, made once for the bad-input tests."""
    work = tmp_path_factory.mktemp("cli")
    assert rvae("synth", work / "cube.zarr", "--size", 96).returncode == 0
    assert rvae("synth", work / "4d.zarr", "--kind", "4dstem", "--size", 16).returncode == 0
    assert rvae("patches", work / "cube.zarr", work / "p.zarr", "--window", 16).returncode == 0
    return work


@pytest.mark.parametrize("args, fragments", [
    (["patches", "{w}/absent.zarr", "{w}/new.zarr"], ["no cube at", "absent.zarr"]),
    (["patches", "{w}/4d.zarr", "{w}/new.zarr"], ["mode 'points' needs a cube with dims", "--mode frames"]),
    (["patches", "{w}/cube.zarr", "{w}/new.zarr", "--window", 500], ["window 500 px is larger than the image"]),
    (["patches", "{w}/cube.zarr", "{w}/p.zarr"], ["already exists", "--overwrite"]),
    (["patches", "{w}/cube.zarr", "{w}/new.zarr", "--window", "big"], ["window", "valid integer", "'big'"]),
    (["train", "{w}/absent.zarr", "{w}/m.ckpt"], ["no patch store at"]),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{w}/absent.ckpt", "{w}/r.zarr"], ["no checkpoint"]),
    (["ingest", "{w}/absent.npy", "{w}/new.zarr"], ["no source file"]),
    (["report", "{w}/absent.zarr", "{w}/rep"], ["no results store at"]),
    # settings that cannot apply are refused, not ignored
    (["synth", "{w}/new.zarr", "--kind", "4dstem", "--spacing", 5], ["4dstem has no spacing"]),
    (["synth", "{w}/new.zarr", "--kind", "4dstem", "--size", 100], ["size 100 is the scan side, at most 64"]),
    (["encode", "{w}/cube.zarr", "{w}/p.zarr", "{w}/m.ckpt", "{w}/r.zarr", "--dask", "slurm", "--threads", 2],
     ["encode threads cannot apply there"]),
])
@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_bad_input_is_one_line_and_nothing_is_written(stores, snapshot, rvae, args, fragments):
    before = snapshot(stores)
    result = rvae(*(a.format(w=stores) if isinstance(a, str) else a for a in args))
    assert_one_line_error(result, *fragments)
    assert snapshot(stores) == before


@pytest.mark.parametrize("value, mode", [(float("nan"), "points"), (float("inf"), "grid"), (-float("inf"), "points")])
def test_non_finite_cube_is_refused_by_the_cli(tmp_path, stores, rvae, value, mode):
    cube = xr.open_zarr(stores / "cube.zarr").load()
    cube["data"][3, 3] = value
    cube.to_zarr(tmp_path / "bad.zarr", zarr_format=3)
    assert_one_line_error(rvae("patches", tmp_path / "bad.zarr", tmp_path / "p.zarr", "--mode", mode), "NaN or Inf")
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_corrupt_chunk_is_one_line_for_every_stage_that_reads_it(tmp_path, stores, rvae, snapshot):
    import shutil

    shutil.copytree(stores / "cube.zarr", tmp_path / "cube.zarr")
    chunk = next(p for p in (tmp_path / "cube.zarr" / "data" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:50] + b"garbage")
    (tmp_path / "p.zarr").mkdir()
    before = snapshot(tmp_path / "p.zarr")
    for args in (["patches", tmp_path / "cube.zarr", tmp_path / "new.zarr", "--mode", "grid"],
                 ["patches", tmp_path / "cube.zarr", tmp_path / "p.zarr", "--overwrite"],
                 ["ingest", tmp_path / "cube.zarr", tmp_path / "copy.zarr", "--dataset", "data"]):
        # the chunk's checksum finds it, naming the chunk file
        assert_one_line_error(rvae(*args), "cannot read", "cube.zarr", f"chunk {chunk} is damaged")
    assert not (tmp_path / "new.zarr").exists() and not (tmp_path / "copy.zarr").exists()
    assert snapshot(tmp_path / "p.zarr") == before  # --overwrite kept the old output: the new one failed


def test_corrupt_patch_store_chunk_fails_training_in_one_line(tmp_path, stores, rvae):
    import shutil

    shutil.copytree(stores / "p.zarr", tmp_path / "p.zarr")
    for chunk in (p for p in (tmp_path / "p.zarr" / "patches" / "c").rglob("*") if p.is_file()):
        chunk.write_bytes(chunk.read_bytes()[:50] + b"garbage")
    result = rvae("train", tmp_path / "p.zarr", tmp_path / "m.ckpt", "--epochs", 1, "--batch-size", 16,
                  "--hidden", "32,32")
    assert_one_line_error(result, "cannot read patch store", "p.zarr", "is damaged")
    assert not (tmp_path / "m.ckpt").exists()


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_config_with_an_unknown_key_names_it(tmp_path, rvae):
    (tmp_path / "run.yaml").write_text("workdir: out\npatches:\n  windw: 32\n")
    result = rvae("run", tmp_path / "run.yaml", cwd=tmp_path)
    assert_one_line_error(result, "patches.windw: unknown key", "allowed: mode, window")
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: -3\n")
    assert_one_line_error(rvae("run", tmp_path / "bad.yaml", cwd=tmp_path), "train.epochs",
                          "greater than or equal to 1")
    assert_one_line_error(rvae("run", tmp_path / "absent.yaml"), "no config file")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_every_command_explains_itself(rvae):
    """``--help`` works for every command and lists every key of the stage's configuration sections
    (a ``%`` in a description once made argparse fail on ``rvae train --help``)."""
    from pipeline.cli import COMMANDS, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():  # every command, positional and option says what it is
        assert parser.description, name
        for action in parser._actions:
            assert action.help and not action.help.startswith("(default"), (name, action.dest)
    for command in commands:
        result = rvae(command, "--help")
        assert result.returncode == 0 and result.stdout.startswith(f"usage: rvae {command}"), result.stderr
        for section in COMMANDS.get(command, (None, None, [], False))[2]:
            for name in section.model_fields:
                assert f"--{name.replace('_', '-')}" in result.stdout, (command, name)
