"""The batch script of one stage of ``rvae submit``, rendered from a template and a site profile.

A script is ``slurm/templates/stage.sbatch`` filled in: ``#SBATCH`` directives for what the stage
needs on the site (:mod:`pipeline.sites`), the profile's ``setup`` lines, exports, and one
command, ``rvae run WORKDIR/slurm/run.yaml --stage NAME``. Training and encoding run it through
``slurm/templates/preemptible.sh``, which passes SLURM's warning signal to the ranks and requeues
the job when they have saved (exit 75).

Values come from a profile, the command line and a run configuration, all of which a user may
have been handed. Each one is quoted for the shell (:func:`shlex.quote`) where the script runs
it; where it cannot be quoted it is refused: an ``#SBATCH`` line ends at a newline and SLURM
splits it at spaces, and a comment ends at a newline. So a script runs nothing but its
profile's ``setup`` lines and ``rvae``.
"""
import re
import shlex
import sys
from importlib.resources import files
from pathlib import Path

from .sites import CONTROL
from .stages import BY_NAME

TEMPLATES = files("pipeline.slurm") / "templates"
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")
# An environment value passed through unquoted: a reference to another variable, with a plain default.
VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[\w./-]*)?\}")


def fill(template, values):
    """``template`` with each ``{{ name }}`` replaced by ``values[name]``; a line that is only a
    placeholder whose value is empty disappears."""
    lines = []
    for line in template.splitlines():
        whole = PLACEHOLDER.fullmatch(line.strip())
        if whole and values[whole.group(1)] == "":
            continue
        lines.append(PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "\n".join(lines) + "\n"


def one_line(value, what):
    """``value`` as text, refused if it holds a newline or another control character."""
    text = str(value)
    if CONTROL.search(text):
        raise ValueError(f"{what} {text!r} holds a control character (a newline would start a new line in the "
                         f"batch script); remove it")
    return text


def directive_value(value, what):
    """``value`` as one word of an ``#SBATCH`` line, or ``ValueError``."""
    text = one_line(value, what)
    if re.search(r"[\s\"'\\]", text):
        raise ValueError(f"{what} {text!r} holds a space, a quote or a backslash, which an #SBATCH line cannot hold; "
                         f"choose one without")
    return text


def export(key, value):
    """``export KEY=value``, the value quoted unless it only refers to another variable."""
    return f"export {key}={value if VARIABLE.fullmatch(value) else shlex.quote(value)}"


def directives(stage, site, paths, runs):
    """``{name: value}`` of the stage's ``#SBATCH`` lines (True: a flag; None: left out)."""
    array, kind = runs > 1, BY_NAME[stage]
    found = {"job-name": f"rvae-{stage}",
             "array": (f"0-{runs - 1}" + (f"%{site.array_limit}" if site.array_limit else "")) if array else None,
             "output": paths["logs"] / (f"{stage}-%a.log" if array else f"{stage}.log"), "open-mode": "append",
             "time": getattr(site.time, stage), **site.for_stage(not kind.ranks), "mem": site.mem,
             "reservation": site.reservation, "mail-type": site.mail_type, "mail-user": site.mail_user}
    if kind.ranks:  # one rank per GPU (or per task), preemptible
        found.update({"nodes": site.nodes, "ntasks-per-node": site.tasks_per_node,
                      "cpus-per-task": site.cpus_per_task, "gpus-per-node": site.gpus_per_node or None,
                      "gpu-bind": site.gpu_bind, "signal": f"B:USR1@{site.signal_seconds}", "requeue": True})
    elif kind.dask:  # a LocalCluster, or dask-mpi ranks
        found.update({"nodes": 1 if site.dask == "local" else None, "ntasks": site.dask_tasks,
                      "cpus-per-task": site.dask_cpus})
    else:
        found.update({"ntasks": 1, "cpus-per-task": 1})
    return found


def launcher(stage, site):
    """The ``srun`` that starts the stage's tasks, as a list of words."""
    if BY_NAME[stage].ranks:
        # -c: since Slurm 22.05 srun no longer takes --cpus-per-task from the job. --wait: once one
        # rank ends the others get 60 s to follow: a crashed rank fails the job within a minute.
        return ["srun", f"--cpus-per-task={site.cpus_per_task}", "--wait=60", f"--mpi={site.mpi}",
                *([f"--cpu-bind={site.cpu_bind}"] if site.cpu_bind else []),
                *([f"--gpus-per-task={site.gpus_per_task}"] if site.gpus_per_task else [])]
    if BY_NAME[stage].dask:
        return ["srun", f"--cpus-per-task={site.dask_cpus}", *([f"--mpi={site.mpi}"] if site.dask == "mpi" else [])]
    return ["srun", "--cpus-per-task=1"]


def render(stage, site, paths, runs=1):
    """The batch script of one stage, as text; with ``runs`` > 1 (a campaign) a job array whose
    task i runs the i-th configuration listed in ``paths["runs"]``. ``ValueError`` (one line) for
    a value the script could not hold safely."""
    array = runs > 1
    run_dir = directive_value(paths["dir"].parent, "workdir")  # in the log path of an #SBATCH line
    header = [f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={directive_value(value, key)}"
              for key, value in directives(stage, site, paths, runs).items() if value not in (None, False)]
    header += [f"#SBATCH {option}" for option in site.extra_sbatch]
    # Without a site setup, the environment that ran `rvae submit`.
    setup = site.setup or [f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}"]
    env = {"OMP_NUM_THREADS": "${SLURM_CPUS_PER_TASK:-1}", "PYTHONUNBUFFERED": "1", **site.env}
    config = '"$config"' if array else shlex.quote(one_line(paths["config"], "workdir"))
    command = " ".join(shlex.quote(word) for word in launcher(stage, site)) + f" rvae run {config} --stage {stage}"
    values = {
        "stage": stage, "site": site.name, "script": one_line(paths["dir"] / f"{stage}.sbatch", "workdir"),
        "what": f"each run of the campaign in {run_dir}" if array else f"the run in {run_dir}",
        "directives": "\n".join(header), "setup": "\n".join(setup),
        "exports": "\n".join(export(key, value) for key, value in env.items()),
        "choose_run": (f'config=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" '
                       f'{shlex.quote(one_line(paths["runs"], "workdir"))})') if array else "",
        "for_run": " for $config" if array else "", "command": command}
    values["run"] = (fill((TEMPLATES / "preemptible.sh").read_text(), values).rstrip("\n")
                     if BY_NAME[stage].ranks else command)
    return fill((TEMPLATES / "stage.sbatch").read_text(), values)
