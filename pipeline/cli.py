"""The ``rvae`` command line: one subcommand per stage, ``run CONFIG`` and ``demo``.

Stage options are generated from the configuration sections (:mod:`pipeline.config`), so the
flags, their help and their validation are those of the YAML keys. Input errors print one
line and exit with status 1.
"""
import argparse
import builtins
import contextlib
import logging
import os
import sys
import typing
from pathlib import Path

from . import config as cfg
from .scheduler import SCHEDULERS
from .stages import NAMES
from .stores import out_of_resources

SITE_OVERRIDES = ("account", "cpu_account", "partition", "qos", "nodes", "tasks_per_node", "gpus_per_node", "backend")
DASK_HELP = ("where Dask runs: threads, a LocalCluster, the ranks of an MPI job, or workers as SLURM jobs "
             "(default: local)")

# One command per stage: (description, [(positional, help)], configuration sections, takes --dask)
COMMANDS = {
    "synth": ("write the embedded synthetic dataset (with ground truth) as a Zarr cube",
              [("out", "the cube to write (NAME.zarr)")], [cfg.SyntheticConfig], False),
    "ingest": ("convert a microscope file (npy, tiff, hdf5/NeXus, zarr, and every format rosettasciio reads: "
               "dm3/dm4, emd, bcf, mib, hspy, ...) to a labelled Zarr v3 cube",
               [("source", "the microscope file"), ("out", "the cube to write (NAME.zarr)")], [cfg.IngestConfig], True),
    "patches": ("cut the training patch stack from a cube (Dask)",
                [("cube", "a cube made by rvae ingest or synth"), ("out", "the patch store to write (NAME.zarr)")],
                [cfg.PatchesConfig], True),
    "train": ("train an rVAE on a patch store",
              [("patches", "a patch store made by rvae patches"),
               ("checkpoint", "the model file to write, or to resume if it is unfinished")],
              [cfg.ModelConfig, cfg.TrainConfig], False),
    "encode": ("stream the cube through the encoder into results.zarr",
               [("cube", "the cube the patch store was cut from"), ("patches", "the patch store"),
                ("checkpoint", "the trained model"), ("out", "the results store to write, or to resume")],
               [cfg.EncodeConfig], True),
    "im2spec": ("predict each position's spectrum from the image window around it (and back), scored on held-out "
                "positions against nearest-neighbour and PCA-regression baselines",
                [("image", "an image cube (y, x), e.g. HAADF"), ("spectra", "a spectrum image on the same scan"),
                 ("out", "the folder to write the models and scores.json in")], [cfg.Im2specConfig], False),
    "report": ("figures and a summary of results.zarr",
               [("results", "a results store made by rvae encode"), ("out", "the folder to draw the report in")],
               [], False),
}
SUBMISSION = [("run_dir", "the workdir of a configuration given to rvae submit")]


def build_parser():
    parser = argparse.ArgumentParser(prog="rvae", description="rotationally invariant VAEs for microscopy cubes")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, text, positionals=(), overwrite="replace an existing output"):
        p = sub.add_parser(name, help=text, description=text)
        for arg, help_text in positionals:
            p.add_argument(arg, help=help_text)
        if overwrite:
            p.add_argument("--overwrite", action="store_true", help=overwrite)
        return p

    for name, (text, positionals, sections, takes_dask) in COMMANDS.items():
        p = command(name, text, positionals)
        for section in sections:
            _add_section(p, section)
        if takes_dask:
            p.add_argument("--dask", choices=SCHEDULERS, default="local", help=DASK_HELP)
            p.add_argument("--site", help="with --dask slurm: the site profile (a shipped name or a YAML path) whose "
                                          "account, partition, QOS and setup lines the worker jobs take; their logs "
                                          "go to slurm/logs beside the output")
    p = command("run", "run the chain's stages from a YAML configuration in its workdir (each stage runs, resumes, "
                       "or is kept when its output is up to date)",
                [("config", "the run's YAML configuration (examples/*.yaml)")],
                "replace existing outputs in the workdir")
    p.add_argument("--stage", action="append", choices=NAMES,
                   help="run only this stage (repeatable); the batch jobs of rvae submit run one each")
    p = command("submit", "one SLURM batch job per stage, each after the one before it succeeds; scripts, logs and "
                          "a record of the submission in WORKDIR/slurm/",
                [("config", "the run's YAML configuration")], overwrite=None)
    p.add_argument("--site", default="generic",
                   help="a shipped site profile (generic, perlmutter, frontier) or the path of your own YAML "
                        "(default: generic)")
    for field in SITE_OVERRIDES:
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, help=f"override the profile's {field}")
    p.add_argument("--inputs", nargs="+", metavar="FILE",
                   help="a campaign: one run per file (in WORKDIR/<file stem>), each stage one job array")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (each job, its dependency, what it asks for, the node-hours it may cost) "
                        "and the sbatch commands; submit nothing")
    p.add_argument("--scripts", action="store_true", help="with --dry-run: print the batch scripts too")
    command("export", "results as a HyperSpy signal (.hspy) for HyperSpy, pyxem, LiberTEM: scan axes navigate, one "
                      "signal axis over the quantities (angle and std in degrees, latents, errors)",
            [("results", "a results store made by rvae encode"), ("out", "NAME.hspy")])
    command("status", "each stage's job, state, progress and, on failure, its log", SUBMISSION, overwrite=None)
    command("cancel", "cancel the jobs of an rvae submit", SUBMISSION, overwrite=None)
    p = command("demo", "the embedded synthetic lattice through every stage; prints where the results are and the "
                        "rotation map's error against the known truth", overwrite="replace an earlier demo's outputs")
    p.add_argument("--workdir", default="rvae-demo", help="where the demo's stages write (default: rvae-demo)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    return parser


def _add_section(parser, section):
    group = parser.add_argument_group(section.__name__.removesuffix("Config").lower() + " options")
    for name, field in section.model_fields.items():
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        default = field.default if field.default is not None else "none"
        text = field.description if "default:" in (field.description or "") else \
            f"{field.description or ''} (default: {default})".strip()
        if field.annotation is bool:  # --refine / --no-refine
            group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                               action=argparse.BooleanOptionalAction, help=text.replace("%", "%%"))
            continue
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, choices=choices,
                           metavar=None if choices else "VALUE", help=text.replace("%", "%%"))  # argparse formats help


def _section_values(args, section):
    values = {}
    for name, field in section.model_fields.items():
        if name not in args:
            continue
        raw = getattr(args, name)
        if isinstance(raw, bool):
            values[name] = raw
        elif raw.lower() in ("none", "null") and type(None) in typing.get_args(field.annotation):
            values[name] = None
        elif any(typing.get_origin(t) is tuple for t in (field.annotation, *typing.get_args(field.annotation))):
            values[name] = [v for v in raw.split(",") if v]
        else:
            values[name] = raw
    return cfg.parse_config(values, section, source=f"rvae {args.command}").model_dump()


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .distributed import ClusterEnvironment
    from .preemption import PREEMPTED_EXIT, Preempted

    # Errors reach the user as one line below; asyncio's reports of the same failure in zarr's other
    # in-flight writes ("Future exception was never retrieved") would only repeat it.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    env = ClusterEnvironment.detect()
    rank = f"[rank {env.rank}] " if env.world_size > 1 else ""
    try:
        _dispatch(args)
        sys.stdout.flush()  # here, where a reader that has gone (a closed pipe) is caught below
    except Preempted as err:
        if env.rank == 0:
            print(f"rvae {args.command}: preempted: {err}", file=sys.stderr)
        return PREEMPTED_EXIT
    except BrokenPipeError:  # `rvae status | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt:
        print(f"rvae {args.command}: interrupted; unfinished outputs are not marked complete", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("RVAE_TRACEBACK"):
            raise
        message, status = describe_error(err)
        print(f"rvae {args.command}: {rank}error: {' '.join(message.split())}", file=sys.stderr)
        return status
    return 0


def describe_error(err):
    """``(one-line message, exit status)`` for an exception that ends a command.

    Errors a user can cause (bad values, missing or existing paths, a full disk, a read-only or
    forbidden path, too little memory) exit 1 and say what and where; anything else is a bug of
    this program and exits 70 (EX_SOFTWARE), pointing to ``RVAE_TRACEBACK=1``.
    """
    if isinstance(err, OSError):
        if err.strerror and err.filename:
            return f"{err.strerror}: {err.filename!r}", 1
        return (err.strerror or str(err)), 1
    if out_of_resources(err):
        return (f"out of memory or threads: {' '.join(str(err).split())[:200] or 'an allocation failed'}; ask for "
                f"less (a smaller size, block, batch or --threads) or raise the limit (ulimit -v, -u)"), 1
    if isinstance(err, (ValueError, TypeError)):
        return str(err), 1
    return (f"internal error: {type(err).__name__}: {err} (run again with RVAE_TRACEBACK=1 set for the "
            f"traceback, and please report it)"), 70


def _dispatch(args):
    from .scheduler import dask_scheduler

    kind = getattr(args, "dask", "threads")
    if args.command == "encode" and kind not in ("mpi", "slurm"):
        kind = "threads"  # blocks are read in this process (pipeline.encode): no cluster to start
    if args.command not in COMMANDS:  # run and demo choose their schedulers by stage; the rest use none
        kind = None
    if args.command == "encode":  # before any cluster starts
        cfg.check_encode_on_dask(args.dask, **_section_values(args, cfg.EncodeConfig))
    # Under srun/mpirun/torchrun every rank runs a command and only rank 0 talks; under --dask mpi
    # only the client rank gets here.
    from .distributed import ClusterEnvironment

    talks = ClusterEnvironment.detect().rank == 0 or getattr(args, "dask", None) == "mpi"
    say = builtins.print if talks else (lambda *a, **k: None)
    site, logs = None, None
    if getattr(args, "site", None) and args.command in COMMANDS and kind != "slurm":
        raise ValueError("--site is for the worker jobs of --dask slurm; add --dask slurm, or leave --site out")
    if kind == "slurm":
        from .sites import load_site

        site = load_site(args.site) if args.site else None
        logs = Path(args.out).resolve().parent / "slurm" / "logs"
    with dask_scheduler(kind, site=site, logs=logs) if kind else contextlib.nullcontext():
        HANDLERS[args.command](args, say)


def _synth_command(args, say):
    from .synthetic import write_synthetic

    write_synthetic(args.out, overwrite=args.overwrite, **_section_values(args, cfg.SyntheticConfig))
    say(f"wrote {args.out}")


def _ingest_command(args, say):
    from .ingest import ingest

    ds = ingest(args.source, args.out, overwrite=args.overwrite, **_section_values(args, cfg.IngestConfig))
    say(f"wrote {args.out}: data {dict(ds['data'].sizes)}")


def _patches_command(args, say):
    from .patches import positions_to_encode, write_patches

    ds = write_patches(args.cube, args.out, overwrite=args.overwrite, **_section_values(args, cfg.PatchesConfig))
    say(f"wrote {args.out}: {ds.sizes['sample']} samples of {ds.sizes['py']}x{ds.sizes['px']} "
        f"({len(positions_to_encode(ds))} positions to encode)")


def _train_command(args, say):
    from .train import train

    train(args.patches, args.checkpoint, overwrite=args.overwrite, log=say,
          model_options=_section_values(args, cfg.ModelConfig), **_section_values(args, cfg.TrainConfig))
    say(f"wrote {args.checkpoint}")


def _encode_command(args, say):
    from .encode import encode_on

    encode_on(args.dask, args.cube, args.patches, args.checkpoint, args.out, overwrite=args.overwrite, log=say,
              **_section_values(args, cfg.EncodeConfig))
    say(f"wrote {args.out}")


def _im2spec_command(args, say):
    from .im2spec import im2spec

    im2spec(args.image, args.spectra, args.out, overwrite=args.overwrite, log=say,
            **_section_values(args, cfg.Im2specConfig))
    say(f"wrote {args.out}")


def _report_command(args, say):
    from .report import write_report

    for path in write_report(args.results, args.out, overwrite=args.overwrite):
        say(f"wrote {path}")


def _run_command(args, say):
    from .run import run

    config, stages = cfg.load_config(args.config), args.stage or NAMES
    if config.dask == "mpi" and not set(stages) <= {"train", "report"}:
        say = builtins.print  # dask-mpi's client is rank 1, and the other ranks never get here
    run(config, stages=stages, overwrite=args.overwrite, log=say)


def _submit_command(args, say):
    from .submit import submit

    overrides = {name: getattr(args, name) for name in SITE_OVERRIDES}
    submit(cfg.load_config(args.config), args.site, inputs=args.inputs, dry_run=args.dry_run,
           show_scripts=args.scripts, log=say, **overrides)


def _export_command(args, say):
    from .export import export_hspy

    say(f"wrote {export_hspy(args.results, args.out, overwrite=args.overwrite)}")


def _status_command(args, say):
    from .status import status

    status(args.run_dir, log=say)


def _cancel_command(args, say):
    from .status import cancel

    cancel(args.run_dir, log=say)


def _demo_command(args, say):
    from .run import demo

    demo(args.workdir, epochs=args.epochs, overwrite=args.overwrite, log=say)


HANDLERS = {"synth": _synth_command, "ingest": _ingest_command, "patches": _patches_command,
            "train": _train_command, "encode": _encode_command, "im2spec": _im2spec_command,
            "report": _report_command, "run": _run_command,
            "submit": _submit_command, "export": _export_command, "status": _status_command,
            "cancel": _cancel_command, "demo": _demo_command}


if __name__ == "__main__":
    sys.exit(main())
