"""End-to-end encode against the model's own forward pass, and 2 ranks against 1.

For each mode (grid windows of a uint16 lattice image; frames of a uint16 4D-STEM scan) it prints
windows/s and input GiB/s of `rvae encode` (cutting, normalising, the model, writing results) on 1
and 2 ranks, and of the pure forward pass that encode runs per window (encoder, the angle's refinement
against the decoder in one frame, the decoder for the reconstruction error, the encoder again on the
window turned upright) on in-memory batches of the same batch size, in the same process setup;
"amortized w/s" is that forward pass without the refinement (``refine: false``), "/amort." the ratio
(refined and amortized alternate twice within each round's process; medians).
Every process runs one torch thread (one rank per core, as ranks are placed on a cluster); a
rank's reader and writer threads run beside it, so one rank may use more than one core, and
"limit" is what two ranks on this machine's cores could reach at best (cores / cores one rank
used). The systems alternate in rounds (forward, 1 rank, 2 ranks, forward, ...) and the ratios
printed are medians over rounds, since this VM's speed drifts by tens of percent within minutes.

    python benchmarks/bench_encode.py                      # 3 rounds, ~8 minutes on 2 cores
    python benchmarks/bench_encode.py --rounds 1 --size 256 --scan 16   # tiny (the test suite runs this)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import report  # noqa: E402

BIN = Path(sys.executable).parent


def prepare(work, size, scan):
    """Cubes, patch stores and briefly trained models for both modes, made through the pipeline."""
    from pipeline.ingest import ingest
    from pipeline.patches import write_patches
    from pipeline.synthetic import lattice_grains, rotating_diffraction
    from pipeline.train import train

    image = (lattice_grains(size=size, seed=0)["data"].values * 1000).astype(np.uint16)
    np.save(work / "image.npy", image)
    frames = (rotating_diffraction(size=16, detector=64, seed=0)["data"].values * 1000).astype(np.uint16)
    np.save(work / "scan.npy", np.tile(frames, (scan // 16, scan // 16, 1, 1)))
    modes = {"grid": {"mode": "grid", "window": 32, "stride": 4}, "frames": {"mode": "frames", "binning": 2}}
    for name, source in (("grid", "image.npy"), ("frames", "scan.npy")):
        ingest(work / source, work / f"{name}.zarr", progress=False, log=lambda line: None)
        write_patches(work / f"{name}.zarr", work / f"{name}-p.zarr", max_samples=2048, progress=False,
                      log=lambda line: None, **modes[name])
        train(work / f"{name}-p.zarr", work / f"{name}.ckpt", epochs=1, batch_size=128, log=lambda line: None)


def encode_args(work, mode, out, batch, block):
    return [str(work / f"{mode}.zarr"), str(work / f"{mode}-p.zarr"), str(work / f"{mode}.ckpt"), str(out),
            "--batch-size", str(batch), "--block", str(block), "--dask", "threads"]


def worker(kind, work, mode, batch, block, out):
    """Time one system in this fresh process; report windows/s and input bytes/s."""
    import torch
    import xarray as xr

    from models import load_checkpoint
    from models.refinement import AngleSearch
    from pipeline.distributed import ClusterEnvironment
    from pipeline.encode import encode, encode_samples, frame_reference, training_sample
    from pipeline.patches import positions_to_encode
    from pipeline.stores import open_store
    from pipeline.windows import WindowSpec

    work = Path(work)
    store = open_store(work / f"{mode}-p.zarr")
    n = len(positions_to_encode(store))
    if kind == "forward":
        model, _ = load_checkpoint(work / f"{mode}.ckpt")
        model.eval()
        spec = WindowSpec.from_attrs(store.attrs)
        samples = spec.normalise(store["patches"].values[:batch * 8])
        speed, symmetry = {}, int(store.attrs.get("lattice_symmetry", 1))
        refined = AngleSearch(model, frame_reference(model, *training_sample(store, spec))[0])
        for name, search in (("refined", refined), ("amortized", None), ("refined", refined), ("amortized", None)):
            encode_samples(model, samples[:batch], batch, search=search, symmetry=symmetry)  # warm-up
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < 2.5:
                encode_samples(model, samples, batch, search=search, symmetry=symmetry)
                count += len(samples)
            speed.setdefault(name, []).append(count / (time.perf_counter() - start))
        speed = {name: statistics.median(values) for name, values in speed.items()}
        report(windows_per_s=speed["refined"], amortized_per_s=speed["amortized"], threads=torch.get_num_threads())
        return
    start, cpu = time.perf_counter(), cpu_seconds()
    encode(work / f"{mode}.zarr", work / f"{mode}-p.zarr", work / f"{mode}.ckpt", out, batch_size=batch,
           block=block, log=lambda line: None)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if ClusterEnvironment.detect().rank == 0:
        cube = xr.open_zarr(work / f"{mode}.zarr")["data"]
        report(windows_per_s=n / seconds, gib_per_s=cube.nbytes / seconds / 2**30, seconds=seconds, windows=n,
               cores_used=cpu / seconds)


def cpu_seconds():
    """CPU time of this process, all its threads (the model's, the reader's, the writer's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(kind, work, mode, batch, block, out, ranks=1):
    """Run :func:`worker` in a fresh process (``ranks`` > 1: that many ranks under torchrun) with
    one torch thread per process, and return what its rank 0 reported: one rank per core, as
    ranks are placed on a cluster (one per GPU, or per node's share of cores)."""
    start = [sys.executable] if ranks == 1 else [str(BIN / "torchrun"), "--nproc-per-node", str(ranks),
                                                 "--master-port", "29661"]
    command = [*start, __file__, "--worker", kind, str(work), mode, str(batch), str(block), str(out)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[7:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="lattice image side, px (grid mode, stride 4)")
    parser.add_argument("--scan", type=int, default=256, help="4D-STEM scan side (64x64 frames, binned 2)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--block", type=int, default=4096, help="positions per block (rvae encode's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, work, mode, batch, block, out = args.worker
        return worker(kind, work, mode, int(batch), int(block), out)

    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        work = Path(tmp)
        prepare(work, args.size, args.scan)
        print(f"{'mode':7} {'round':>5} {'amortized w/s':>13} {'forward w/s':>12} {'/amort.':>7} {'1 rank w/s':>11} "
              f"{'GiB/s':>6} {'/forward':>8} {'cores':>5} {'2 ranks w/s':>12} {'2/1':>5} {'limit':>5}")
        for mode in ("grid", "frames"):
            ratios, scaling, limits, refined = [], [], [], []
            for r in range(args.rounds):
                forward = timed("forward", work, mode, args.batch_size, args.block, "-")
                one = timed("encode", work, mode, args.batch_size, args.block, work / f"{mode}-r{r}-1.zarr")
                two = timed("encode", work, mode, args.batch_size, args.block, work / f"{mode}-r{r}-2.zarr", ranks=2)
                ratios.append(one["windows_per_s"] / forward["windows_per_s"])
                scaling.append(two["windows_per_s"] / one["windows_per_s"])
                # one rank's reader and writer threads also use the second core: two ranks on these
                # two cores can at best share out the CPU time one rank spent
                limits.append(min(2.0, os.cpu_count() / one["cores_used"]))
                refined.append(forward["windows_per_s"] / forward["amortized_per_s"])
                print(f"{mode:7} {r + 1:5d} {forward['amortized_per_s']:13.0f} {forward['windows_per_s']:12.0f} "
                      f"{refined[-1]:7.2f} {one['windows_per_s']:11.0f} "
                      f"{one['gib_per_s']:6.3f} {ratios[-1]:8.2f} {one['cores_used']:5.2f} "
                      f"{two['windows_per_s']:12.0f} {scaling[-1]:5.2f} {limits[-1]:5.2f}", flush=True)
            print(f"{mode}: {one['windows']} windows; median refined / amortized forward pass "
                  f"{statistics.median(refined):.2f}, median end-to-end / forward {statistics.median(ratios):.2f}, "
                  f"median 2 ranks / 1 rank {statistics.median(scaling):.2f} (machine limit "
                  f"{statistics.median(limits):.2f}; over {args.rounds} rounds)")


if __name__ == "__main__":
    main()
