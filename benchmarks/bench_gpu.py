"""The GPU path, measured in one short run: training and encoding at fp32 and bf16, compiled or not.

Makes a synthetic lattice, cuts grid windows, then for each (precision, compile) variant trains
the default rVAE for a few epochs and encodes every window, printing training images/s (median
epoch after the first), encode windows/s end to end, and peak device memory (peak RSS on CPU).
It runs wherever torch runs: on a GPU machine it measures the device (one GPU, the rank's own);
on CPU the test suite runs it at a tiny size so the script cannot rot.

    python benchmarks/bench_gpu.py                           # GPU: ~3-5 minutes on one H100/H200
    python benchmarks/bench_gpu.py --size 256 --epochs 2 --batch-size 64 --no-compile   # tiny, CPU
"""
import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_process import peak_rss_gib  # noqa: E402


def peak_memory_gib(device):
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="lattice image side, px")
    parser.add_argument("--stride", type=int, default=4, help="grid stride, px (windows of 32 px)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=200_000, help="training stack size")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variants")
    args = parser.parse_args()

    import torch

    import models  # noqa: F401  (Pyro's module-local parameters)
    from pipeline.distributed import NoStrategy
    from pipeline.encode import encode
    from pipeline.patches import positions_to_encode, write_patches
    from pipeline.stores import open_store
    from pipeline.synthetic import write_synthetic
    from pipeline.train import train

    device = NoStrategy().device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        write_synthetic(work / "cube.zarr", size=args.size, log=lambda line: None)
        write_patches(work / "cube.zarr", work / "p.zarr", mode="grid", window=32, stride=args.stride,
                      max_samples=args.samples, progress=False, log=lambda line: None)
        windows = len(positions_to_encode(open_store(work / "p.zarr")))
        print(f"{args.size} px lattice, {windows} grid windows of 32 px to encode, "
              f"{min(windows, args.samples)} to train on, batch {args.batch_size}")
        print(f"{'precision':9} {'compile':7} {'train img/s':>11} {'encode w/s':>11} {'peak GiB':>8}")
        variants = [(p, c) for c in ((False, True) if args.compile else (False,)) for p in ("fp32", "bf16")]
        for precision, compiled in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            lines = []
            train(work / "p.zarr", work / f"{precision}-{compiled}.ckpt", epochs=args.epochs,
                  batch_size=args.batch_size, precision=precision, compile=compiled, log=lines.append)
            rates = [float(m) for m in re.findall(r"(\d+) img/s", "\n".join(lines))]
            start = time.perf_counter()
            encode(work / "cube.zarr", work / "p.zarr", work / f"{precision}-{compiled}.ckpt",
                   work / f"{precision}-{compiled}.zarr", batch_size=args.batch_size, block=4 * args.batch_size,
                   precision=precision, log=lambda line: None)
            encode_rate = windows / (time.perf_counter() - start)
            print(f"{precision:9} {str(compiled):7} {statistics.median(rates[1:] or rates):11.0f} "
                  f"{encode_rate:11.0f} {peak_memory_gib(device):8.2f}", flush=True)


if __name__ == "__main__":
    main()
