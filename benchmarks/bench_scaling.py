"""Data-parallel scaling on this machine: 1 rank x 1 thread vs 2 ranks x 1 thread, per backend.

Prints images/s of one plain process (the reference for every backend) and of 2 ranks per backend
(DDP under torchrun, Horovod under Open MPI's mpirun), the 2-rank/1-rank ratio with plain and
fp16-compressed gradient allreduce, the machine's own limit (two independent processes at once),
and the cost of one gradient allreduce between 2 ranks.

    python benchmarks/bench_scaling.py                 # ddp and horovod (if built), 3 rounds, ~40 minutes
    python benchmarks/bench_scaling.py --backends ddp --batch-sizes 256
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def launch(backend, ranks, job, env):
    """The command that starts ``job`` (a list) as ``ranks`` ranks of ``backend``."""
    if backend == "horovod":  # Open MPI's mpirun, as on a cluster (srun --mpi=pmix alike): the MPI controller
        return [str(BIN / "mpirun"), "-np", str(ranks), "-x", "OMP_NUM_THREADS", sys.executable, *job]
    if backend == "ddp":
        return [str(BIN / "torchrun"), "--nproc-per-node", str(ranks), "--master-port", "29651", *job]
    return [sys.executable, *job]


def train_command(backend, patches, out, args, batch, compression="none"):
    return ["-m", "pipeline.cli", "train", str(patches), str(out), "--backend", backend, "--epochs", str(args.epochs),
            "--batch-size", str(batch), "--threads", "1", "--compression", compression]


def images_per_second(stdout):
    """Median images/s over the epochs after the first."""
    rates = [float(m) for m in re.findall(r"(\d+) img/s", stdout)]
    return statistics.median(rates[1:] or rates)


def train_throughput(backend, ranks, patches, args, env, batch, compression="none"):
    with tempfile.TemporaryDirectory() as tmp:
        job = train_command(backend, patches, f"{tmp}/m.ckpt", args, batch, compression)
        result = subprocess.run(launch(backend, ranks, job, env), capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{backend} x{ranks} failed:\n{result.stderr[-2000:]}")
    return images_per_second(result.stdout)


def independent_throughput(patches, args, env, batch):
    """Two unsynchronised single-process runs at once: what this machine gives two ranks at best."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, *train_command("none", patches, f"{tmp}/{i}.ckpt", args, batch)],
                                  stdout=subprocess.PIPE, text=True, env=env) for i in range(2)]
        return sum(images_per_second(p.communicate()[0]) for p in procs)


def allreduce_probe(backend, n_params, repeats=50):
    """Run inside a 2-rank job: seconds per allreduce of ``n_params`` float32 values (rank 0 prints)."""
    import torch

    from pipeline.distributed import make_strategy

    torch.set_num_threads(1)
    grad = torch.randn(n_params)
    strategy = make_strategy(backend)
    strategy.setup()  # the settings `rvae train` runs with

    def reduce():
        if backend == "horovod":
            strategy.hvd.allreduce(grad, op=strategy.hvd.Average)
        else:
            torch.distributed.all_reduce(grad)

    for _ in range(5):
        reduce()
    start = time.perf_counter()
    for _ in range(repeats):
        reduce()
    if strategy.is_main:
        print(f"ALLREDUCE {(time.perf_counter() - start) / repeats:.6f}")
    strategy.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["ddp", "horovod"])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024], help="per rank")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of every configuration, each run paired with a 1-rank run just before it; "
                             "medians are printed (this VM's speed drifts by tens of percent over minutes)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.probe:
        return allreduce_probe(args.probe, args.params)

    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as work:
        compare(args, Path(work))


def compare(args, work):
    """Every measurement, on a patch store made in ``work``."""
    import models
    from pipeline.patches import write_patches
    from pipeline.synthetic import write_synthetic

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    write_synthetic(work / "cube.zarr", size=384)
    write_patches(work / "cube.zarr", work / "patches.zarr", mode="grid", window=32, stride=2,
                  max_samples=args.samples, progress=False)
    n_params = sum(p.numel() for p in models.RVAE((1, 32, 32)).parameters())
    print(f"{args.samples} samples of 32x32, default rVAE ({n_params:,} parameters, {n_params * 4 / 2**20:.1f} MiB "
          f"of gradients), 1 thread per rank, {os.cpu_count()} cores; img/s = median over epochs 2..{args.epochs}, "
          f"then over {args.repeats} rounds")
    backends = [b for b in args.backends if b != "horovod" or _horovod_built()]
    for backend in backends:
        probe = [str(Path(__file__).resolve()), "--probe", backend, "--params", str(n_params)]
        out = subprocess.run(launch(backend, 2, probe, env), capture_output=True, text=True, env=env).stdout
        seconds = float(re.search(r"ALLREDUCE ([\d.]+)", out).group(1))
        print(f"{backend}: one allreduce of the gradients between 2 ranks: {seconds * 1e3:.2f} ms")
    print(f"\n{'batch/rank':>10} {'1 rank':>8} {'backend':8} {'2 ranks':>8} {'ratio':>6} {'2 ranks fp16':>13} "
          f"{'ratio':>6} {'machine limit':>14}")
    for batch in args.batch_sizes:
        def run(config):
            if config == "limit":
                return independent_throughput(work / "patches.zarr", args, env, batch)
            backend, compression = config
            return train_throughput(backend, 2, work / "patches.zarr", args, env, batch, compression)

        configs = ["limit", *((b, c) for b in backends for c in ("none", "fp16"))]
        speeds, ratios = {}, {}
        for _ in range(args.repeats):
            for config in configs:
                # each run right after its own 1-rank reference: this VM's speed drifts by tens of percent
                # over minutes, and a ratio of two neighbouring runs sees the same machine
                one = train_throughput("none", 1, work / "patches.zarr", args, env, batch)
                speed = run(config)
                speeds.setdefault("one", []).append(one)
                speeds.setdefault(config, []).append(speed)
                ratios.setdefault(config, []).append(speed / one)
        speed, ratio = ({k: statistics.median(v) for k, v in d.items()} for d in (speeds, ratios))
        for backend in backends:
            plain, half = (backend, "none"), (backend, "fp16")
            print(f"{batch:10d} {speed['one']:8.0f} {backend:8} {speed[plain]:8.0f} {ratio[plain]:6.2f} "
                  f"{speed[half]:13.0f} {ratio[half]:6.2f} {ratio['limit']:13.2f}x", flush=True)
        spread = "; ".join(f"{label(config)} " + " ".join(f"{r:.2f}" for r in values)
                           for config, values in ratios.items())
        print(f"{'':10} ratio in each round: {spread}")
    print("\n1 rank: one plain process (--backend none), run before every other run; ratio: median over rounds of "
          "each run over the 1-rank run just before it; machine limit: two plain processes at once (no communication)")


def label(config):
    """``"limit"``, or a (backend, compression) pair as ``"ddp"`` / ``"ddp fp16"``."""
    return config if config == "limit" else " ".join(c for c in config if c != "none")


def _horovod_built():
    built = subprocess.run([sys.executable, "-c", "import horovod.torch"], capture_output=True).returncode == 0
    if not built:
        print("horovod: not built (make horovod); skipped")
    return built


if __name__ == "__main__":
    main()
