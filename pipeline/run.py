"""``rvae run``: the whole chain for one configuration; ``rvae demo``: the same on embedded data."""
from pathlib import Path

from .config import EncodeConfig, RunConfig, as_run
from .stages import BY_NAME, NAMES, is_cube, stage_paths


def run(config, *, stages=NAMES, overwrite=False, progress=True, log=print):
    """Run ``stages`` of the chain (by default all: ingest or synth, patches, train, encode, report)
    in ``config.workdir``; returns the paths.

    Each stage runs, resumes, or (its output complete, of these same inputs and settings) is kept
    as it is, so the same command continues a run that stopped anywhere, and one stage at a time
    (``rvae run CONFIG --stage NAME``, as the batch jobs of ``rvae submit`` do) gives the same
    outputs as the whole chain.
    """
    from .scheduler import dask_scheduler

    unknown = [name for name in stages if name not in NAMES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(NAMES)}")
    uses_dask = any(BY_NAME[name].dask for name in stages) or (config.dask in ("mpi", "slurm") and "encode" in stages)
    paths = stage_paths(config.workdir)
    if config.input is not None and is_cube(config.input):
        paths["cube"] = Path(config.input)
    site = None
    if config.dask == "slurm" and config.site:
        from .sites import load_site

        site = load_site(config.site)
    logs = Path(config.workdir) / "slurm" / "logs"
    with dask_scheduler(config.dask if uses_dask else "threads", site=site, logs=logs):
        for name in (name for name in NAMES if name in stages):
            RUNNERS[name](config, paths, overwrite, progress, log)
    return paths


def _run_cube(config, paths, overwrite, progress, log):
    from .ingest import ingest
    from .synthetic import write_synthetic

    reuse = not overwrite
    if config.input is None:
        log(f"[synth] {config.synthetic.kind} -> {paths['cube']}")
        write_synthetic(paths["cube"], overwrite=overwrite, reuse=reuse, log=log, **config.synthetic.model_dump())
    elif not is_cube(config.input):
        log(f"[ingest] {config.input} -> {paths['cube']}")
        ingest(config.input, paths["cube"], overwrite=overwrite, reuse=reuse, progress=progress, log=log,
               **config.ingest.model_dump())


def _run_patches(config, paths, overwrite, progress, log):
    from .patches import write_patches

    log(f"[patches] {config.patches.mode} windows -> {paths['patches']}")
    write_patches(paths["cube"], paths["patches"], overwrite=overwrite, reuse=not overwrite, progress=progress,
                  log=log, **config.patches.model_dump())


def _run_train(config, paths, overwrite, progress, log):
    from .train import train

    log(f"[train] -> {paths['checkpoint']}")
    train(paths["patches"], paths["checkpoint"], model_options=config.model.model_dump(),
          overwrite=overwrite, reuse=not overwrite, log=log, **config.train.model_dump())


def _run_encode(config, paths, overwrite, progress, log):
    from .encode import encode_on

    log(f"[encode] -> {paths['results']}")
    encode_on(config.dask, paths["cube"], paths["patches"], paths["checkpoint"], paths["results"], overwrite=overwrite,
              reuse=not overwrite, config_text=as_run(config), variable=config.patches.variable, log=log,
              **config.encode.model_dump())


def _run_report(config, paths, overwrite, progress, log):
    from .report import write_report

    log(f"[report] -> {paths['report']}")
    summary, results = paths["report"] / "summary.txt", paths["results"] / "zarr.json"
    if not overwrite and summary.is_file() and summary.stat().st_size and \
            summary.stat().st_mtime >= results.stat().st_mtime:
        log(f"{paths['report']}: already drawn from these results, kept")
        return
    stale = summary.is_file()  # drawn from older results: the run's own figures, drawn again from these
    if stale:
        log(f"{paths['report']}: drawn from older results, drawn again")
    write_report(paths["results"], paths["report"], overwrite=overwrite or stale, log=log)


def up_to_date(config, stage, world_size=1):
    """Whether ``stage``'s output in the run's workdir is complete and made from the same inputs with
    the same settings (``world_size`` ranks for training): what :func:`run` would keep, checked
    without writing anything (``rvae submit`` skips such stages)."""
    paths = stage_paths(config.workdir)
    if config.input is not None and is_cube(config.input):
        paths["cube"] = Path(config.input)
    try:
        if stage == "cube":
            if config.input is None:
                from .synthetic import write_synthetic

                return write_synthetic(paths["cube"], check_only=True, **config.synthetic.model_dump())
            from .ingest import ingest

            return is_cube(config.input) or ingest(config.input, paths["cube"], check_only=True,
                                                   **config.ingest.model_dump())
        if stage == "patches":
            from .patches import write_patches

            return write_patches(paths["cube"], paths["patches"], check_only=True, **config.patches.model_dump())
        if stage == "train":
            from .train import trained

            return trained(paths["patches"], paths["checkpoint"], world_size=world_size,
                           model_options=config.model.model_dump(), **config.train.model_dump())
        if stage == "encode":
            from .encode import encoded

            return encoded(paths["cube"], paths["patches"], paths["checkpoint"], paths["results"],
                           variable=config.patches.variable, **config.encode.model_dump())
        summary, results = paths["report"] / "summary.txt", paths["results"] / "zarr.json"
        return summary.is_file() and summary.stat().st_size > 0 and summary.stat().st_mtime >= results.stat().st_mtime
    except (OSError, ValueError):  # an input that is missing or changed: the stage runs and says so
        return False


RUNNERS = {"cube": _run_cube, "patches": _run_patches, "train": _run_train, "encode": _run_encode,
           "report": _run_report}


def demo_config(workdir="rvae-demo", epochs=20):
    """The default demo: a 4-grain hexagonal lattice, atom-centred windows, a small warp-decoder rVAE."""
    base = RunConfig(workdir=Path(workdir))
    return base.model_copy(update={"train": base.train.model_copy(update={"epochs": epochs}),
                                   "encode": EncodeConfig(symmetry=6)})


def demo(workdir="rvae-demo", *, epochs=20, overwrite=False, log=print):
    """Synthetic data through every stage; prints where results are and the rotation-map error."""
    import time

    from .evaluate import rotation_error
    from .stores import open_store

    start = time.perf_counter()
    config = demo_config(workdir, epochs)
    paths = run(config, overwrite=overwrite, log=log)
    results = open_store(paths["results"], what="results store")
    truth = open_store(paths["cube"], what="cube")["true_angle"].load()
    score = rotation_error(results, truth)
    log(f"results: {paths['results']}  (xarray.open_zarr); figures: {paths['report']}")
    log(f"rotation-map error vs ground truth: circular MAE {score['mae_deg']:.2f} deg, median "
        f"{score['median_deg']:.2f} deg, modulo {360 / score['symmetry']:g} deg, over {score['n']} atom columns "
        f"({time.perf_counter() - start:.0f} s)")
    return score
