"""``rvae status RUN_DIR`` and ``rvae cancel RUN_DIR``: the jobs of an ``rvae submit``.

Each stage's state comes from SLURM (``squeue`` while queued or running, ``scontrol show job``
for a while after; ``sacct`` where accounting is kept, which also says what each job used: elapsed
time, CPU time, GPUs), its progress from its output (epochs in the checkpoint, blocks in the
results), and a failed stage is named with the tail of its log; a cancelled one is not a failure.
"""
import os
import re
import stat
import subprocess
from pathlib import Path

from .manifest import read_submissions
from .stages import stage_paths

DONE = ("COMPLETED",)
# CANCELLED is a user's (or an administrator's) decision, not a failure of the stage
FAILED = ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def job_state(job_id):
    """``(state, reason, exit code)`` of a job as SLURM knows it, or ``("UNKNOWN", ...)`` once it
    has forgotten it (and no accounting is kept)."""
    queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True)
    if queued.returncode == 0 and queued.stdout.strip():
        state, reason = queued.stdout.strip().splitlines()[0].split("|", 1)
        return state, "" if reason == "None" else reason, None
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    if shown.returncode == 0:
        fields = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
        reason = fields.get("Reason", "")
        code = fields.get("ExitCode", "").split(":")[0]
        return fields.get("JobState", "UNKNOWN"), "" if reason == "None" else reason, code
    accounted = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"], capture_output=True,
                               text=True)
    if accounted.returncode == 0 and accounted.stdout.strip():
        state, code = accounted.stdout.strip().splitlines()[0].split("|")
        return state.split()[0], "", code.split(":")[0]
    return "UNKNOWN", "no longer known to SLURM", None


def job_usage(job_id):
    """What a job used, from SLURM's accounting (``sacct``), as a few words ("" without accounting):
    its elapsed time, CPU time against the CPUs it held, and its GPUs."""
    accounted = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "Elapsed,TotalCPU,AllocTRES"],
                               capture_output=True, text=True)
    if accounted.returncode != 0 or not accounted.stdout.strip():
        return ""
    return describe_usage(accounted.stdout.strip().splitlines()[0])


def describe_usage(line):
    """``"Elapsed|TotalCPU|AllocTRES"`` (``sacct -P``) as ``elapsed ..., CPU ... of N CPUs, G GPUs``."""
    elapsed, cpu, tres = (line.split("|") + ["", "", ""])[:3]
    held = dict(item.split("=", 1) for item in tres.split(",") if "=" in item)
    words = [f"elapsed {elapsed}"] if elapsed else []
    if cpu:
        words.append(f"CPU {cpu}" + (f" of {held['cpu']} CPUs" if "cpu" in held else ""))
    if "gres/gpu" in held:
        words.append(f"{held['gres/gpu']} GPU(s)")
    return ", ".join(words)


def run_paths(config_path):
    """The outputs (:func:`pipeline.stages.stage_paths`) of the run a submitted configuration describes."""
    from .config import load_config

    return stage_paths(load_config(config_path).workdir)


def progress(stage, paths):
    """A few words on how far a stage's output (among the run's ``paths``) has got, read from it."""
    try:
        if stage == "train" and paths["checkpoint"].is_file():
            from models import load_checkpoint

            _, payload = load_checkpoint(paths["checkpoint"])
            done = payload["epochs"] if payload.get("finished") else payload["epoch"] - 1
            return f"{done}/{payload['epochs']} epochs"
        if stage == "encode" and (paths["results"] / "zarr.json").is_file():
            import zarr

            from .results import blocks_done

            group = zarr.open_group(str(paths["results"]), mode="r")
            blocks = blocks_done(group)
            return f"{int(blocks.sum())}/{len(blocks)} blocks" + (", complete" if group.attrs.get("complete") else "")
    except (OSError, ValueError, KeyError):
        return "output unreadable"
    return ""


def status(run_dir, *, tail=15, log=print):
    """Print each stage's job, state, progress and, for a failed stage, its log's tail; returns
    ``{stage: [state of each run]}`` (one run, or each file of a campaign)."""
    submissions = read_submissions(run_dir)
    manifest = submissions[-1].model_dump()
    configs = manifest["configs"]
    log(f"{Path(run_dir).resolve()}: submitted {manifest['submitted']} on site {manifest['site']}"
        + (f", a campaign of {len(configs)} runs" if len(configs) > 1 else "")
        + (f" (submission {len(submissions)}; rvae status shows the latest)" if len(submissions) > 1 else ""))
    for stage in manifest["up_to_date"]:
        log(f"  {stage:8} not submitted: up to date")
    states, failed = {}, []
    paths = run_paths(configs[0]) if len(configs) == 1 else None
    for entry in manifest["stages"]:
        stage, job = entry["stage"], entry["job_id"]
        tasks = [job] if len(configs) == 1 else [f"{job}_{i}" for i in range(len(configs))]
        found = [job_state(task) for task in tasks]
        states[stage] = [state for state, _, _ in found]
        if len(configs) == 1:
            (state, reason, code), = found
            detail = ", ".join(x for x in (reason, f"exit {code}" if code not in (None, "0") else "",
                                           progress(stage, paths), job_usage(job)) if x)
            log(f"  {stage:8} job {job:>8}  {state:12} {detail}")
        else:
            counts = {state: states[stage].count(state) for state in dict.fromkeys(states[stage])}
            log(f"  {stage:8} job {job:>8}  " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        failed += [(stage, i, state, entry["logs"][i]) for i, (state, reason, _) in enumerate(found)
                   if state in FAILED and reason != "DependencyNeverSatisfied"]
    for stage, i, state, path in failed:
        run = f" of {Path(configs[i]).stem}" if len(configs) > 1 else ""
        log(f"stage {stage}{run} failed ({state}); the last lines of {path}:")
        for line in log_tail(path, tail) or ["(no log written)"]:
            log(f"    {line}")
    cancelled = [entry["stage"] for entry in manifest["stages"] if "CANCELLED" in states[entry["stage"]]]
    if cancelled:
        log(f"cancelled: {', '.join(cancelled)} (rvae cancel or scancel); rvae submit again continues the run "
            f"where its outputs stopped")
    for entry in manifest["stages"]:
        for i, state in enumerate(states[entry["stage"]]):
            if state == "RUNNING":
                log(f"{entry['stage']} is running; its log: {entry['logs'][i]}")
    return states


def log_tail(path, lines, limit=64 * 1024):
    """The last ``lines`` lines of a log file (read from its last ``limit`` bytes at most); none
    for a path that is missing or not a regular file (a FIFO is never opened for long)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        f.seek(max(0, size - limit))
        return f.read(limit).decode(errors="replace").splitlines()[-lines:]


def cancel(run_dir, *, log=print):
    """Cancel every job of the submission still queued or running."""
    ids = [job.job_id for job in read_submissions(run_dir)[-1].stages]
    if not ids:
        log(f"{Path(run_dir).resolve()}: its latest submission has no jobs")
        return
    done = subprocess.run(["scancel", "--", *ids], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"scancel failed: {done.stderr.strip()}")
    log(f"cancelled jobs {', '.join(ids)} of {Path(run_dir).resolve()}")
