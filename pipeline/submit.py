"""``rvae submit RUN.yaml --site NAME``: the chain as SLURM batch jobs, one per stage.

Each stage (cube, patches, train, encode, report) gets a batch script in ``WORKDIR/slurm/``,
asking for what that stage needs on the site (:mod:`pipeline.sites`): the Dask stages one task
with a node's cores (or dask-mpi ranks), training and encoding one rank per GPU (or per
``tasks_per_node``) under ``srun``, the report one core. Every script runs ``rvae run
WORKDIR/slurm/run.yaml --stage NAME`` (the submitted configuration, paths made absolute), so a
script can be read, edited and ``sbatch``-ed by hand. Jobs are chained with
``--dependency=afterok``: a failed stage leaves the ones after it never runnable, and SLURM
cancels them.

Training and encoding jobs ask for ``--signal=B:USR1@<s>`` and ``--requeue``: the script passes
the signal to the ranks, which save (a checkpoint; written blocks) and exit 75, and the script
then requeues its own job, which resumes where it stopped; the chain waits for it. Logs go to
``WORKDIR/slurm/logs/STAGE.log``, appended across requeues. ``WORKDIR/slurm/manifest.json``
records the site, the scripts, the job ids and the configuration (``rvae status`` reads it).

A campaign (``--inputs`` FILE...) is one run per file, each in ``WORKDIR/<file stem>``: every
stage is one job array, task i after task i of the stage before (``aftercorr``).
"""
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .config import to_yaml
from .run import STAGES, _is_cube
from .sites import load_site

RANK_STAGES = ("train", "encode")  # one rank per GPU (or per tasks_per_node), preemptible
DASK_STAGES = ("cube", "patches")


def submission_paths(workdir):
    base = Path(workdir).resolve() / "slurm"
    return {"dir": base, "config": base / "run.yaml", "manifest": base / "manifest.json", "logs": base / "logs",
            "runs": base / "runs.txt"}


def campaign(config, inputs):
    """One configuration per input file, each in its own run directory ``WORKDIR/<file stem>``."""
    stems = [Path(source).name.split(".")[0] for source in inputs]
    if len(set(stems)) < len(stems):  # scan.npy and scan.h5, or the same name in two folders
        stems = [f"{i:04d}-{stem}" for i, stem in enumerate(stems)]
    return [config.model_copy(update={"input": Path(source), "workdir": Path(config.workdir) / stem})
            for source, stem in zip(inputs, stems)]


def prepare(config, site):
    """The configuration the jobs run: paths absolute (jobs start in other directories), the Dask
    engine the site's, and a data-parallel backend for training on more than one rank."""
    update = {"workdir": Path(config.workdir).resolve(), "dask": site.dask}
    if config.input is not None:
        update["input"] = Path(config.input).resolve()
    if config.patches.points is not None:
        update["patches"] = config.patches.model_copy(update={"points": Path(config.patches.points).resolve()})
    if site.ranks > 1 and config.train.backend == "none":
        update["train"] = config.train.model_copy(update={"backend": site.backend})
    return config.model_copy(update=update)


def stages_of(config):
    """The stages this configuration needs (a given Zarr cube needs no cube stage)."""
    return [s for s in STAGES if not (s == "cube" and config.input is not None and _is_cube(config.input))]


def render(stage, site, paths, runs=1):
    """The batch script of one stage, as text; with ``runs`` > 1 (a campaign) a job array whose
    task i runs the i-th configuration listed in ``paths["runs"]``."""
    array = runs > 1
    directives = {"job-name": f"rvae-{stage}", "array": f"0-{runs - 1}" if array else None,
                  "output": paths["logs"] / (f"{stage}-%a.log" if array else f"{stage}.log"), "open-mode": "append",
                  "time": getattr(site.time, stage), "account": site.account, "partition": site.partition,
                  "qos": site.qos, "constraint": site.constraint}
    launch = ["srun"]
    if stage in RANK_STAGES:
        directives.update({"nodes": site.nodes, "ntasks-per-node": site.tasks_per_node,
                           "cpus-per-task": site.cpus_per_task,
                           "gpus-per-node": site.gpus_per_node or None, "gpu-bind": site.gpu_bind,
                           "signal": f"B:USR1@{site.signal_seconds}", "requeue": True})
        # --wait: once one rank ends the others get 60 s to follow before srun ends them: a crashed
        # rank fails the job within a minute, not at the time limit.
        launch += ["--wait=60", f"--mpi={site.mpi}"] + ([f"--cpu-bind={site.cpu_bind}"] if site.cpu_bind else [])
    elif stage in DASK_STAGES:
        directives.update({"nodes": 1 if site.dask == "local" else None, "ntasks": site.dask_tasks,
                           "cpus-per-task": site.dask_cpus})
        launch += [f"--mpi={site.mpi}"] if site.dask == "mpi" else []
    else:
        directives.update({"ntasks": 1, "cpus-per-task": 1})
    header = [f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"
              for key, value in directives.items() if value not in (None, False)]
    # Without a site setup, the environment that ran `rvae submit`.
    setup = site.setup or [f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}"]
    env = {"OMP_NUM_THREADS": "${SLURM_CPUS_PER_TASK:-1}", "PYTHONUNBUFFERED": "1", **site.env}
    config = '"$config"' if array else shlex.quote(str(paths["config"]))
    command = " ".join([*launch, "rvae", "run", config, "--stage", stage])
    what = f"each run of the campaign in {paths['dir'].parent}" if array else f"the run in {paths['dir'].parent}"
    lines = [
        "#!/bin/bash",
        f"# rvae-hpc, stage '{stage}' of {what} (rvae submit, site {site.name}).",
        f"# By hand: sbatch {paths['dir'] / (stage + '.sbatch')}",
        *header,
        "set -uo pipefail",
        *setup,
        *(f"export {key}={value if value.startswith('${') else shlex.quote(value)}" for key, value in env.items()),
        *([f'config=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(paths["runs"]))})'] if array else []),
        f'echo "[$(date +%FT%T)] rvae {stage}: job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}) on '
        f'$SLURM_JOB_NODELIST, ${{SLURM_NTASKS:-1}} task(s){" for $config" if array else ""}"',
    ]
    if stage not in RANK_STAGES:
        return "\n".join([*lines, command, ""])
    return "\n".join([*lines,
        "# SIGUSR1 (--signal=B:...) reaches this shell alone: pass it to the ranks, which save and exit 75.",
        f"{command} &",
        "step=$!",
        'trap \'echo "[$(date +%FT%T)] SIGUSR1: asking the ranks to save and stop"; kill -USR1 $step\' USR1',
        "while kill -0 $step 2>/dev/null; do wait $step; done",
        "wait $step; status=$?",
        "if [ $status -eq 75 ]; then",
        '    echo "[$(date +%FT%T)] rvae ' + stage + ': saved and stopped (exit 75); requeueing job $SLURM_JOB_ID"',
        "    scontrol requeue $SLURM_JOB_ID && exit 0",
        "fi",
        "exit $status",
        ""])


def submit(config, site_name, *, inputs=None, dry_run=False, log=print, **site_overrides):
    """Write the scripts and the manifest, submit the chain (unless ``dry_run``); returns the manifest.

    ``inputs``: a campaign, one run per file (:func:`campaign`): every stage is one job array,
    task i of each after task i of the one before (``aftercorr``), so one file's failure stops
    only that file's chain.
    """
    site = load_site(site_name, **site_overrides)
    paths = submission_paths(config.workdir)
    runs = [prepare(c, site) for c in (campaign(config, inputs) if inputs else [config])]
    stages = STAGES if inputs else stages_of(runs[0])
    scripts = {stage: render(stage, site, paths, len(runs) if inputs else 1) for stage in stages}
    if dry_run:
        for stage, text in scripts.items():
            log(f"# ---- {paths['dir'] / (stage + '.sbatch')}\n{text}")
        return None
    _refuse_if_running(paths)
    paths["logs"].mkdir(parents=True, exist_ok=True)
    if inputs:
        (paths["dir"] / "runs").mkdir(exist_ok=True)
        configs = [paths["dir"] / "runs" / f"{Path(run.workdir).name}.yaml" for run in runs]
        paths["runs"].write_text("".join(f"{path}\n" for path in configs))
    else:
        configs = [paths["config"]]
    for path, run in zip(configs, runs):
        path.write_text(to_yaml(run))
    manifest = {"site": site.name, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "configs": list(map(str, configs)),
                "stages": []}
    previous = None
    for stage, text in scripts.items():
        script = paths["dir"] / f"{stage}.sbatch"
        script.write_text(text)
        command = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
        if previous:
            command.append(f"--dependency={'aftercorr' if inputs else 'afterok'}:{previous}")
        done = subprocess.run([*command, str(script)], capture_output=True, text=True)
        if done.returncode != 0:
            _cancel([s["job_id"] for s in manifest["stages"]])
            raise ValueError(f"sbatch refused the {stage} job: {done.stderr.strip() or done.stdout.strip()}"
                             + (" (the jobs submitted before it are cancelled)" if manifest["stages"] else ""))
        previous = done.stdout.strip().split(";")[0]
        logs = [paths["logs"] / (f"{stage}-{i}.log" if inputs else f"{stage}.log") for i in range(len(runs))]
        manifest["stages"].append({"stage": stage, "job_id": previous, "script": str(script),
                                   "logs": list(map(str, logs))})
        _write_manifest(paths["manifest"], manifest)
        log(f"submitted {stage:8} job {previous}{f' ({len(runs)} runs)' if inputs else ''}  log {logs[0]}"
            + (" ..." if inputs else ""))
    log(f"follow it with: rvae status {paths['dir'].parent}")
    return manifest


def _write_manifest(path, manifest):
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(manifest, indent=1))
    staging.replace(path)


def _refuse_if_running(paths):
    """A second submission into a run directory whose jobs are still queued would race them."""
    if not paths["manifest"].is_file():
        return
    ids = [s["job_id"] for s in json.loads(paths["manifest"].read_text())["stages"]]
    queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
    if ids and queued.returncode == 0 and queued.stdout.split():
        raise FileExistsError(f"{str(paths['dir'].parent)!r} has jobs of an earlier submission still queued "
                              f"({', '.join(queued.stdout.split())}); wait for them or rvae cancel it first")


def _cancel(job_ids):
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)
