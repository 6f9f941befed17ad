"""Data-parallel scaling on this machine: 1 rank x 1 thread vs 2 ranks x 1 thread, per backend.

Prints images/s for each (backend, ranks), the 2-rank/1-rank ratio, and the cost of one gradient
allreduce (the model's parameters, measured in a 2-rank job) next to the compute time of one step.

    python benchmarks/bench_scaling.py                 # ddp and horovod (if built), ~3 minutes
    python benchmarks/bench_scaling.py --backends ddp --epochs 3
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
    if backend == "horovod":
        return [str(BIN / "horovodrun"), "-np", str(ranks), "--gloo", sys.executable, *job]
    if backend == "ddp":
        return [str(BIN / "torchrun"), "--nproc-per-node", str(ranks), "--master-port", "29651", *job]
    return [sys.executable, *job]


def train_throughput(backend, ranks, patches, args, env):
    """Median images/s over the epochs after the first."""
    with tempfile.TemporaryDirectory() as tmp:
        job = ["-m", "pipeline.cli", "train", str(patches), f"{tmp}/m.ckpt", "--backend", backend,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", "1"]
        result = subprocess.run(launch(backend, ranks, job, env), capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{backend} x{ranks} failed:\n{result.stderr[-2000:]}")
    rates = [float(m) for m in re.findall(r"(\d+) img/s", result.stdout)]
    return statistics.median(rates[1:] or rates)


def allreduce_probe(backend, n_params, repeats=50):
    """Run inside a 2-rank job: seconds per allreduce of ``n_params`` float32 values (rank 0 prints)."""
    import torch

    torch.set_num_threads(1)
    grad = torch.randn(n_params)
    if backend == "horovod":
        import horovod.torch as hvd

        hvd.init()
        reduce, rank = (lambda: hvd.allreduce(grad, op=hvd.Average)), hvd.rank()
    else:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        reduce, rank = (lambda: dist.all_reduce(grad)), dist.get_rank()
    for _ in range(5):
        reduce()
    start = time.perf_counter()
    for _ in range(repeats):
        reduce()
    if rank == 0:
        print(f"ALLREDUCE {(time.perf_counter() - start) / repeats:.6f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["ddp", "horovod"])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return allreduce_probe(args.probe, args.params)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import models
    from pipeline.patches import write_patches
    from pipeline.synthetic import write_synthetic

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    write_synthetic(work / "cube.zarr", size=384)
    write_patches(work / "cube.zarr", work / "patches.zarr", mode="grid", window=32, stride=4,
                  max_samples=args.samples, progress=False)
    n_params = sum(p.numel() for p in models.RVAE((1, 32, 32)).parameters())
    print(f"{args.samples} samples of 32x32, batch {args.batch_size} per rank, default rVAE ({n_params:,} parameters, "
          f"{n_params * 4 / 2**20:.1f} MiB of gradients), 1 thread per rank, {os.cpu_count()} cores")
    print(f"{'backend':8} {'1 rank img/s':>13} {'2 ranks img/s':>14} {'ratio':>6} {'allreduce ms':>13} "
          f"{'step ms (1 rank)':>17} {'allreduce/step':>15}")
    for backend in args.backends:
        if backend == "horovod" and subprocess.run([sys.executable, "-c", "import horovod.torch"]).returncode:
            print("horovod  not built (make horovod): skipped")
            continue
        one = train_throughput(backend, 1, work / "patches.zarr", args, env)
        two = train_throughput(backend, 2, work / "patches.zarr", args, env)
        probe = [str(Path(__file__).resolve()), "--probe", backend, "--params", str(n_params)]
        out = subprocess.run(launch(backend, 2, probe, env), capture_output=True, text=True, env=env).stdout
        allreduce = float(re.search(r"ALLREDUCE ([\d.]+)", out).group(1))
        step = args.batch_size / one
        print(f"{backend:8} {one:13.0f} {two:14.0f} {two / one:6.2f} {allreduce * 1e3:13.2f} {step * 1e3:17.1f} "
              f"{allreduce / step:15.1%}")


if __name__ == "__main__":
    main()
