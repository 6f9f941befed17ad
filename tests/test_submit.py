"""``rvae submit``'s site profiles and batch scripts, without a cluster (the jobs themselves run
in test_slurm.py on the local one). Perlmutter and Frontier are not here, so their scripts are
checked against those sites' documented conventions."""
import re

import pytest
import yaml

from pipeline.batch_scripts import render
from pipeline.config import RunConfig
from pipeline.manifest import submission_paths
from pipeline.sites import SITES_DIR, load_site
from pipeline.submit import prepare, stages_of


def directives(script):
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", script, re.M))


def scripts(site, tmp_path, config=None):
    config = prepare(config or RunConfig(workdir=tmp_path / "run"), site)
    return {stage: render(stage, site, submission_paths(config.workdir)) for stage in stages_of(config)}


def test_every_shipped_profile_loads_or_names_what_it_needs():
    assert {p.stem for p in SITES_DIR.glob("*.yaml")} >= {"generic", "perlmutter", "frontier"}
    assert load_site("generic").ranks == 2
    for name in ("perlmutter", "frontier"):
        with pytest.raises(ValueError, match=f"'account' is required on {name}.*--account"):
            load_site(name)
    with pytest.raises(ValueError, match="'cpu_account' is required on perlmutter.*--cpu-account"):
        load_site("perlmutter", account="m1234_g")
    assert load_site("perlmutter", account="m1234_g", cpu_account="m1234").cpu_account == "m1234"
    assert load_site("frontier", account="abc123").account == "abc123"


@pytest.mark.parametrize("edit, message", [
    ({"nodes": 0}, r"nodes: Input should be greater than or equal to 1"),
    ({"tasks": 4}, r"tasks: unknown key"),
    ({"time": {"train": "forever"}}, r"time.train: String should match"),
    ({"required": ["qos"]}, r"'qos' is required"),
    ({"dask": "mpi", "dask_tasks": 2}, r"dask_tasks >= 3"),
    # a typo in a section names the section's own keys, and a top-level typo the profile's (not a run's)
    ({"time": {"trian": "01:00:00"}}, r"time.trian: unknown key \(allowed: cube, patches, train, encode, report\)"),
    ({"acount": "x"}, r"acount: unknown key \(allowed: name, account, partition"),
    ({"mem": "lots"}, r"mem: String should match"),
    ({"mail_type": "SOMETIMES"}, r"mail_type: String should match"),
    ({"extra_sbatch": ["--exclusive --x=1"]}, r"is not one sbatch option"),
    ({"env": {"MY VAR": "1"}}, r"is not an environment variable name"),
    ({"array_limit": 0}, r"array_limit: Input should be greater than or equal to 1"),
])
def test_a_bad_profile_is_one_line_naming_the_field(tmp_path, edit, message):
    profile = yaml.safe_load((SITES_DIR / "generic.yaml").read_text()) | edit
    (tmp_path / "mysite.yaml").write_text(yaml.safe_dump(profile))
    with pytest.raises(ValueError, match=message) as caught:
        load_site(tmp_path / "mysite.yaml")
    assert "\n" not in str(caught.value)


def test_perlmutter_scripts_follow_nersc_conventions(tmp_path):
    site = load_site("perlmutter", account="m1234_g", cpu_account="m1234")
    rendered = scripts(site, tmp_path)
    assert list(rendered) == ["cube", "patches", "train", "encode", "report"]
    for stage in ("train", "encode"):
        d = directives(rendered[stage])
        # one task per GPU, 4 A100s a node, a quarter of the node's 128 hardware threads each
        assert (d["account"], d["constraint"], d["qos"]) == ("m1234_g", "gpu", "regular")
        assert (d["ntasks-per-node"], d["gpus-per-node"], d["cpus-per-task"]) == ("4", "4", "32")
        assert d["gpu-bind"] == "none" and d["signal"] == "B:USR1@120" and "requeue" in d
        assert "export SLURM_CPU_BIND=cores" in rendered[stage]
        assert re.search(r"^srun --cpus-per-task=32 --wait=60 --mpi=cray_shasta --cpu-bind=cores rvae run .* --stage "
                         + stage,
                         rendered[stage], re.M)
    assert "module load pytorch" in rendered["train"]
    assert "partition" not in directives(rendered["train"])  # Perlmutter routes by QOS and constraint
    for stage in ("cube", "patches", "report"):  # CPU-only stages: CPU nodes, shared QOS, the CPU account
        d = directives(rendered[stage])
        assert (d["account"], d["constraint"], d["qos"]) == ("m1234", "cpu", "shared")
        assert "gpus-per-node" not in d


def test_frontier_scripts_follow_olcf_conventions(tmp_path):
    site = load_site("frontier", account="ABC123")
    d = directives(scripts(site, tmp_path)["train"])
    # one rank per GCD, 8 a node, 7 cores each, bound to the closest GCD, the batch partition
    assert (d["account"], d["partition"]) == ("ABC123", "batch")
    assert (d["ntasks-per-node"], d["gpus-per-node"], d["cpus-per-task"], d["gpu-bind"]) == ("8", "8", "7", "closest")
    assert "constraint" not in d and "qos" not in d
    # as OLCF's examples launch ranks: -c 7 --gpus-per-task=1 on srun's own line
    train = scripts(site, tmp_path)["train"]
    assert re.search(r"^srun --cpus-per-task=7 --wait=60 --mpi=cray_shasta --cpu-bind=cores --gpus-per-task=1 rvae run",
                     train, re.M)
    assert "/ccs/proj/${SLURM_JOB_ACCOUNT,,}/" in train  # Project Home, not the purged Member Work


def test_generic_scripts_need_no_site_and_run_in_this_environment(tmp_path):
    import sys

    rendered = scripts(load_site("generic"), tmp_path)
    for stage, text in rendered.items():
        d = directives(text)
        assert d["output"] == str(tmp_path / "run" / "slurm" / "logs" / f"{stage}.log")
        assert d["open-mode"] == "append"  # a requeued job's log continues, it is not truncated
        assert f"source {sys.prefix}/bin/activate" in text
        assert not {"account", "partition", "qos", "constraint", "gpus-per-node"} & set(d)
    assert directives(rendered["cube"])["cpus-per-task"] == "2"  # what a small node has, not a hard-coded 8


def test_the_submitted_config_has_absolute_paths_and_a_backend_for_its_ranks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig(workdir="run", input="scan.npy")
    prepared = prepare(config, load_site("generic"))
    assert prepared.workdir == tmp_path / "run" and prepared.input == tmp_path / "scan.npy"
    assert prepared.train.backend == "ddp"
    assert prepare(config, load_site("generic", backend="horovod")).train.backend == "horovod"
    assert prepare(config, load_site("generic", tasks_per_node=1)).train.backend == "none"


def test_a_given_cube_needs_no_cube_job(tmp_path, lattice_cube):
    assert stages_of(RunConfig(input=lattice_cube)) == ["patches", "train", "encode", "report"]
    assert stages_of(RunConfig())[0] == "cube"


@pytest.mark.slow  # several rvae processes: not in `make test-quick`
def test_dry_run_prints_the_plan_and_the_scripts_on_request_and_writes_nothing(rvae, tmp_path):
    (tmp_path / "run.yaml").write_text("workdir: out\n")
    done = rvae("submit", "run.yaml", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "#!/bin/bash" not in done.stdout
    # every stage after the one before it, what it asks for, and the node-hours it may cost
    assert re.search(r"^  train +afterok:patches +2 x 1 +0 +1 +04:00:00 +4\.00$", done.stdout, re.M), done.stdout
    assert re.search(r"^  total +10\.50$", done.stdout, re.M)
    assert re.search(r"^  sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:\$JOB_train "
                     r"\S+/out/slurm/encode\.sbatch$", done.stdout, re.M)
    done = rvae("submit", "run.yaml", "--dry-run", "--scripts", cwd=tmp_path)
    assert done.stdout.count("#!/bin/bash") == 5 and "--stage train" in done.stdout
    assert not (tmp_path / "out").exists()
    done = rvae("submit", "run.yaml", "--site", "perlmutter", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "'account' is required" in done.stderr


def test_dask_stages_on_dask_mpi_ranks_inside_their_allocation(tmp_path):
    site = load_site("generic", dask="mpi", dask_tasks=4)
    rendered = scripts(site, tmp_path)
    d = directives(rendered["patches"])
    assert d["ntasks"] == "4" and "nodes" not in d  # dask-mpi's ranks may spread over nodes
    assert re.search(r"^srun --cpus-per-task=2 --mpi=pmix rvae run .* --stage patches$", rendered["patches"], re.M)
    assert prepare(RunConfig(workdir=tmp_path), site).dask == "mpi"


def test_every_new_directive_reaches_the_scripts(tmp_path):
    site = load_site("generic", **{"mem": "64G", "mail_type": "END,FAIL", "mail_user": "me@lab.org",
                                   "reservation": "beamtime", "extra_sbatch": ["--exclusive", "--licenses=scratch"],
                                   "array_limit": 3, "cpu_partition": "shared"})
    paths = submission_paths(tmp_path / "run")
    train, report = render("train", site, paths), render("report", site, paths)
    d = directives(train)
    assert (d["mem"], d["mail-type"], d["mail-user"], d["reservation"]) == ("64G", "END,FAIL", "me@lab.org",
                                                                            "beamtime")
    assert "#SBATCH --exclusive\n#SBATCH --licenses=scratch" in train
    assert "partition" not in d and directives(report)["partition"] == "shared"
    assert directives(render("patches", site, paths, runs=10))["array"] == "0-9%3"


def test_what_a_job_used_reads_from_sacct():
    from pipeline.status import describe_usage

    assert describe_usage("00:05:12|00:09:30|billing=64,cpu=64,gres/gpu=4,mem=230G,node=1") == \
        "elapsed 00:05:12, CPU 00:09:30 of 64 CPUs, 4 GPU(s)"
    assert describe_usage("00:00:03|00:00.512|cpu=1,mem=1G,node=1") == "elapsed 00:00:03, CPU 00:00.512 of 1 CPUs"
