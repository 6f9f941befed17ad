"""``rvae run``: the whole chain for one configuration; ``rvae demo``: the same on embedded data."""
from pathlib import Path

from .config import EncodeConfig, RunConfig, to_yaml


def stage_paths(workdir):
    work = Path(workdir)
    return {"cube": work / "cube.zarr", "patches": work / "patches.zarr", "checkpoint": work / "model.ckpt",
            "results": work / "results.zarr", "report": work / "report"}


def run(config, *, overwrite=False, progress=True, log=print):
    """Run ingest (or synth), patches, train, encode and report in ``config.workdir``; returns the paths."""
    from .scheduler import dask_scheduler

    with dask_scheduler(config.dask):
        return _run_stages(config, overwrite, progress, log)


def _run_stages(config, overwrite, progress, log):
    """Each stage runs, resumes, or (its output complete, of these same inputs and settings) is
    kept as it is, so the same command continues a run that stopped anywhere."""
    from .encode import encode_on
    from .ingest import ingest
    from .patches import write_patches
    from .report import write_report
    from .synthetic import write_synthetic
    from .train import train

    paths = stage_paths(config.workdir)
    reuse = not overwrite
    if config.input is None:
        log(f"[synth] {config.synthetic.kind} -> {paths['cube']}")
        write_synthetic(paths["cube"], overwrite=overwrite, reuse=reuse, log=log, **config.synthetic.model_dump())
    elif _is_cube(config.input):
        paths["cube"] = Path(config.input)
    else:
        log(f"[ingest] {config.input} -> {paths['cube']}")
        ingest(config.input, paths["cube"], overwrite=overwrite, reuse=reuse, progress=progress, log=log,
               **config.ingest.model_dump())
    log(f"[patches] {config.patches.mode} windows -> {paths['patches']}")
    write_patches(paths["cube"], paths["patches"], overwrite=overwrite, reuse=reuse, progress=progress, log=log,
                  **config.patches.model_dump())
    log(f"[train] -> {paths['checkpoint']}")
    train(paths["patches"], paths["checkpoint"], model_options=config.model.model_dump(),
          overwrite=overwrite, reuse=reuse, log=log, **config.train.model_dump())
    log(f"[encode] -> {paths['results']}")
    encode_on(config.dask, paths["cube"], paths["patches"], paths["checkpoint"], paths["results"], overwrite=overwrite,
              reuse=reuse, config_text=to_yaml(config), variable=config.patches.variable, log=log,
              **config.encode.model_dump())
    log(f"[report] -> {paths['report']}")
    summary, results = paths["report"] / "summary.txt", paths["results"] / "zarr.json"
    if reuse and summary.exists() and summary.stat().st_mtime >= results.stat().st_mtime:
        log(f"{paths['report']}: already drawn from these results, kept")
    else:
        write_report(paths["results"], paths["report"], overwrite=overwrite, log=log)
    return paths


def _is_cube(path):
    """A Zarr store this pipeline can read directly (it has a ``data`` variable)."""
    path = Path(path)
    return path.is_dir() and (path / "data").is_dir()


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
