"""``rvae submit RUN.yaml --site NAME``: the chain as SLURM batch jobs, one per stage.

Each stage (cube, patches, train, encode, report) gets a batch script in ``WORKDIR/slurm/``,
asking for what that stage needs on the site (:mod:`pipeline.sites`): the Dask stages one task
with the profile's ``dask_cpus`` cores (or ``dask_tasks`` dask-mpi ranks), training and encoding
one rank per GPU (or per ``tasks_per_node``) under ``srun``, the report one core; the CPU-only
stages on the profile's ``cpu_*`` partition, QOS and account where it names them. Every script
is rendered from ``slurm/templates/`` (:mod:`pipeline.batch_scripts`) and runs ``rvae run
WORKDIR/slurm/run.yaml --stage NAME`` (the submitted configuration, paths made absolute), so a
script can be read, edited and ``sbatch``-ed by hand. Jobs are chained with
``--dependency=afterok``: a failed stage leaves the ones after it never runnable, and SLURM
cancels them.

Training and encoding jobs ask for ``--signal=B:USR1@<s>`` and ``--requeue``: the script passes
the signal to the ranks, which save (a checkpoint; written blocks) and exit 75, and the script
then requeues its own job, which resumes where it stopped; the chain waits for it. Logs go to
``WORKDIR/slurm/logs/STAGE.log``, appended across requeues. ``WORKDIR/slurm/manifest.json``
records every submission: the site, the scripts, the job ids and the configuration
(:mod:`pipeline.manifest`; ``rvae status`` reads the latest). ``--dry-run`` prints the plan
(:func:`plan`): each job, what it waits for, what it asks for and the node-hours it may cost.

A campaign (``--inputs`` FILE...) is one run per file, each in ``WORKDIR/<file stem>``: every
stage is one job array, task i after task i of the stage before (``aftercorr``).
"""
import shlex
import subprocess
import time
from pathlib import Path

from .batch_scripts import directives, render
from .config import to_yaml
from .manifest import StageJob, Submission, read_submissions, submission_paths, write_submissions
from .sites import load_site
from .stages import BY_NAME, NAMES, is_cube


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
    return [s for s in NAMES if not (s == "cube" and config.input is not None and is_cube(config.input))]


def time_hours(limit):
    """Hours in a SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH[:MM[:SS]]
        seconds = sum(v * u for v, u in zip(parts, (3600, 60, 1)))
    else:  # MM, MM:SS or HH:MM:SS
        seconds = sum(v * u for v, u in zip(parts, (60, 1) if len(parts) < 3 else (3600, 60, 1)))
    return int(days or 0) * 24 + seconds / 3600


def plan(stages, site, runs=1):
    """Per stage what its job asks for: ``[{stage, after, ranks, cpus, gpus, time, nodes, node_hours}]``;
    ``node_hours`` is the most the job can be charged at sites that charge whole nodes (its time
    limit times its nodes, times the runs of a campaign)."""
    rows, previous = [], None
    node_cores = site.tasks_per_node * site.cpus_per_task
    for stage in stages:
        asked = directives(stage, site, {"logs": Path()}, runs)
        tasks, cpus = asked.get("ntasks") or site.ranks, asked["cpus-per-task"]
        gpus = site.gpus_per_node * site.nodes if BY_NAME[stage].ranks else 0
        # dask-mpi's tasks go where SLURM puts them: count the nodes their cores fill at the least
        nodes = asked.get("nodes") or max(1, -(-tasks * cpus // node_cores))
        after = f"{'aftercorr' if runs > 1 else 'afterok'}:{previous}" if previous else ""
        rows.append({"stage": stage, "after": after,
                     "ranks": tasks, "cpus": cpus, "gpus": gpus, "time": asked["time"], "nodes": nodes,
                     "node_hours": nodes * time_hours(asked["time"]) * runs})
        previous = stage
    return rows


def describe_plan(rows, site, run_dir, runs=1):
    """The plan as lines of text: a table, then the total."""
    campaign = f", a campaign of {runs} runs (job arrays)" if runs > 1 else ""
    lines = [f"plan for {run_dir} on site {site.name}{campaign}",
             f"  {'stage':8} {'after':18} {'tasks x CPUs':>12} {'GPUs':>5} {'nodes':>5} {'time':>11} "
             f"{'node-hours at most':>19}"]
    for row in rows:
        lines.append(f"  {row['stage']:8} {row['after'] or '-':18} {row['ranks']:>5} x {row['cpus']:<4} "
                     f"{row['gpus']:>5} {row['nodes']:>5} {row['time']:>11} {row['node_hours']:>19.2f}")
    lines.append(f"  {'total':8} {'':18} {'':>12} {'':>5} {'':>5} {'':>11} "
                 f"{sum(row['node_hours'] for row in rows):>19.2f}")
    return lines


def sbatch_command(script, dependency=""):
    return ["sbatch", "--parsable", "--kill-on-invalid-dep=yes",
            *([f"--dependency={dependency}"] if dependency else []),
            str(script)]


def submit(config, site_name, *, inputs=None, dry_run=False, show_scripts=False, log=print, **site_overrides):
    """Write the scripts and the record, submit the chain (unless ``dry_run``); returns the
    :class:`~pipeline.manifest.Submission` (None for a dry run, which prints the plan: each job,
    its dependency, what it asks for and the node-hours it may cost, and the sbatch commands;
    ``show_scripts``: the scripts too).

    ``inputs``: a campaign, one run per file (:func:`campaign`): every stage is one job array,
    task i of each after task i of the one before (``aftercorr``), so one file's failure stops
    only that file's chain.
    """
    site = load_site(site_name, **site_overrides)
    paths = submission_paths(config.workdir)
    runs = [prepare(c, site) for c in (campaign(config, inputs) if inputs else [config])]
    stages = NAMES if inputs else stages_of(runs[0])
    kept = [] if inputs else _up_to_date_stages(runs[0], stages, site.ranks)
    stages = [stage for stage in stages if stage not in kept]
    for stage in kept:
        log(f"{stage:8} up to date (its output is complete, from the same inputs and settings): not submitted")
    if not stages:
        log(f"every stage of {paths['dir'].parent} is up to date: nothing to submit")
        return None
    scripts = {stage: render(stage, site, paths, len(runs) if inputs else 1) for stage in stages}
    rows = plan(stages, site, len(runs) if inputs else 1)
    if dry_run:
        for line in describe_plan(rows, site, paths["dir"].parent, len(runs) if inputs else 1):
            log(line)
        log("sbatch commands (nothing submitted; $JOB_<stage> is the job id sbatch prints for that stage):")
        for row in rows:
            dependency = row["after"].replace(":", ":$JOB_", 1) if row["after"] else ""
            log("  " + " ".join(shlex.quote(word) if not word.startswith("--dependency=") else word
                                for word in sbatch_command(paths["dir"] / f"{row['stage']}.sbatch", dependency)))
        if show_scripts:
            for stage, text in scripts.items():
                log(f"# ---- {paths['dir'] / (stage + '.sbatch')}\n{text}")
        else:
            log("the scripts: add --scripts")
        return None
    earlier = _refuse_if_running(paths)
    paths["logs"].mkdir(parents=True, exist_ok=True)
    if inputs:
        (paths["dir"] / "runs").mkdir(exist_ok=True)
        configs = [paths["dir"] / "runs" / f"{Path(run.workdir).name}.yaml" for run in runs]
        paths["runs"].write_text("".join(f"{path}\n" for path in configs))
    else:
        configs = [paths["config"]]
    for path, run in zip(configs, runs):
        path.write_text(to_yaml(run))
    record = Submission(site=site.name, submitted=time.strftime("%Y-%m-%dT%H:%M:%S"), configs=list(map(str, configs)),
                        up_to_date=kept)
    previous = None
    for row in rows:
        stage = row["stage"]
        script = paths["dir"] / f"{stage}.sbatch"
        script.write_text(scripts[stage])
        dependency = f"{row['after'].split(':')[0]}:{previous}" if previous else ""
        done = subprocess.run(sbatch_command(script, dependency), capture_output=True, text=True)
        if done.returncode != 0:
            _cancel([job.job_id for job in record.stages])
            raise ValueError(f"sbatch refused the {stage} job: {done.stderr.strip() or done.stdout.strip()}"
                             + (" (the jobs submitted before it are cancelled)" if record.stages else ""))
        previous = done.stdout.strip().split(";")[0]
        logs = [paths["logs"] / (f"{stage}-{i}.log" if inputs else f"{stage}.log") for i in range(len(runs))]
        record.stages.append(StageJob(stage=stage, job_id=previous, script=str(script), logs=list(map(str, logs)),
                                      dependency=dependency))
        write_submissions(config.workdir, [*earlier, record])
        log(f"submitted {stage:8} job {previous}{f' ({len(runs)} runs)' if inputs else ''}  log {logs[0]}"
            + (" ..." if inputs else ""))
    log(f"follow it with: rvae status {paths['dir'].parent}")
    return record


def _up_to_date_stages(config, stages, world_size):
    """The leading stages whose outputs :func:`pipeline.run.up_to_date` would keep: the first
    stage that must run, and every stage after it, are submitted."""
    from .run import up_to_date

    kept = []
    for stage in stages:
        if not up_to_date(config, stage, world_size):
            break
        kept.append(stage)
    return kept


def _refuse_if_running(paths):
    """The submissions recorded so far; refused while one's jobs are still queued (a second chain
    in the same run directory would race them)."""
    if not paths["manifest"].is_file():
        return []
    earlier = read_submissions(paths["dir"].parent)
    ids = [job.job_id for job in earlier[-1].stages]
    queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True)
    if ids and queued.returncode == 0 and queued.stdout.split():
        raise FileExistsError(f"{str(paths['dir'].parent)!r} has jobs of an earlier submission still queued "
                              f"({', '.join(queued.stdout.split())}); wait for them or rvae cancel it first")
    return earlier


def _cancel(job_ids):
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True)
