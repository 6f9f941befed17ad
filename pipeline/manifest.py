"""The record of ``rvae submit`` in a run directory: ``WORKDIR/slurm/manifest.json``.

It lists every submission into the directory, oldest first: the site, the configurations, and
per stage the job id, its script and its logs (or that the stage was up to date and not
submitted). ``rvae status`` and ``rvae cancel`` act on what it says, so it is checked when read:
job ids are SLURM's numbers (``scancel`` is never handed an option), and every path it names lies
in the submission's own folder (``status`` never prints another file).
"""
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import format_validation_error


class StageJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Literal["cube", "patches", "train", "encode", "report"]
    job_id: str = Field(pattern=r"^\d{1,12}$")
    script: str
    logs: list[str]
    dependency: str = ""  # e.g. afterok:1234 (empty for the first job)


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: str
    submitted: str
    configs: list[str] = Field(min_length=1)
    stages: list[StageJob] = []
    up_to_date: list[str] = []  # stages not submitted: their outputs were complete


def submission_paths(workdir):
    base = Path(workdir).resolve() / "slurm"
    return {"dir": base, "config": base / "run.yaml", "manifest": base / "manifest.json", "logs": base / "logs",
            "runs": base / "runs.txt"}


def read_submissions(run_dir):
    """Every :class:`Submission` recorded in ``run_dir`` (oldest first); ``FileNotFoundError``
    without a record, ``ValueError`` (one line) for a record that is not one this tool wrote."""
    paths = submission_paths(run_dir)
    path = paths["manifest"]
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no submission record ({path}); was it made by rvae submit?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        listed = data.get("submissions", [data]) if isinstance(data, dict) else None  # one submission: older rvae
        if not isinstance(listed, list) or not listed:
            raise ValueError("no submissions in it")
        submissions = [Submission.model_validate(entry) for entry in listed]
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError and ValidationError are ValueErrors
        detail = format_validation_error(err, Submission) if isinstance(err, ValidationError) else str(err)
        raise ValueError(f"{path} is not a submission record rvae submit wrote ({' '.join(detail.split())[:200]}); "
                         f"it cannot be used") from err
    for submission in submissions:
        named = [*submission.configs, *(p for job in submission.stages for p in (job.script, *job.logs))]
        outside = [p for p in named if not _within(p, paths["dir"])]
        if outside:
            raise ValueError(f"{path} names {outside[0]!r}, outside the submission's folder {str(paths['dir'])!r}; "
                             f"it cannot be used")
    return submissions


def write_submissions(run_dir, submissions):
    """Write the record (atomically: beside it, then renamed)."""
    path = submission_paths(run_dir)["manifest"]
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps({"submissions": [s.model_dump() for s in submissions]}, indent=1))
    staging.replace(path)


def _within(path, folder):
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
