"""The run's stages, in order, and what each needs: the one table that ``rvae run``, ``rvae
submit``, the batch scripts and ``rvae status`` read.

``cube`` is ``synth`` (no input) or ``ingest`` (a source file); a given Zarr cube needs no cube
stage. The CLI's per-stage commands (``rvae synth``, ``ingest``, ...) are in :mod:`pipeline.cli`.
"""
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str
    product: str  # what its output is called in a run's paths (stage_paths)
    output: str  # its output, in the run's workdir
    dask: bool  # computes with Dask (a LocalCluster, or dask-mpi ranks in a batch job)
    ranks: bool  # one rank per GPU (or per task), preemptible: saves and exits 75 on SIGUSR1


STAGES = (Stage("cube", "cube", "cube.zarr", dask=True, ranks=False),
          Stage("patches", "patches", "patches.zarr", dask=True, ranks=False),
          Stage("train", "checkpoint", "model.ckpt", dask=False, ranks=True),
          # encode computes with Dask only on a cluster of its own (--dask mpi|slurm)
          Stage("encode", "results", "results.zarr", dask=False, ranks=True),
          Stage("report", "report", "report", dask=False, ranks=False))
NAMES = tuple(stage.name for stage in STAGES)
BY_NAME = {stage.name: stage for stage in STAGES}


def stage_paths(workdir):
    """``{product: path}`` of every stage's output in ``workdir``: cube, patches, checkpoint, results, report."""
    return {stage.product: Path(workdir) / stage.output for stage in STAGES}


def is_cube(path):
    """A Zarr store this pipeline can read directly (it has a ``data`` variable)."""
    path = Path(path)
    return path.is_dir() and (path / "data").is_dir()
