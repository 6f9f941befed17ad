"""A source larger than this machine's memory through every stage: ingest, patches, train, encode.

Writes a raw ``.npy`` of ``--gib`` GiB (uint16, detector-like noise; default 32 GiB, more than the
RAM of the machines this was written on), an image or (``--kind 4dstem``) a 4D-STEM scan of
128x128 frames (32 GiB: a 1024x1024 scan, 10^6 frames), then runs, each in a fresh process, the
ingest stage (npy -> compressed Zarr v3 cube), the patch stage (the default bounded stack: grid
windows of the image at ``--stride``, frames of the scan binned by ``--binning``), one epoch of
training on that stack, and the encode stage over every position of the cube (one process, as
``rvae encode --dask threads``), and prints wall time, input GiB/s, windows/s and peak RSS as a
fraction of the machine's RAM.

    python benchmarks/bench_out_of_core.py --workdir /scratch/ooc      # needs ~2.5x --gib of disk
    python benchmarks/bench_out_of_core.py --kind 4dstem
    python benchmarks/bench_out_of_core.py --gib 0.0078 --stride 1     # a dense (stride-1) map, 2048^2
"""
import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from counts import fill_with_counts
from fresh_process import measure, report
from scratch import scratch

GIB = 2**30


def write_source(path, kind, gib, seed=0):
    frame = (128, 128) if kind == "4dstem" else ()
    side = int(np.sqrt(gib * GIB / 2 / np.prod(frame, dtype=int)))
    shape = (side, side, *frame)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    fill_with_counts(data, rows=8 if frame else 1024, seed=seed)  # bands of 256 MiB at 32 GiB
    data.flush()
    del data
    return shape


def worker(stage, workdir, kind, stride, binning):
    from pipeline.encode import encode
    from pipeline.ingest import ingest
    from pipeline.patches import write_patches
    from pipeline.scheduler import dask_scheduler
    from pipeline.train import train

    work = Path(workdir)
    cube, patches, checkpoint = work / "cube.zarr", work / "patches.zarr", work / "model.ckpt"
    quiet = dict(log=lambda line: None)
    start = time.perf_counter()
    with dask_scheduler("threads"):  # as `rvae <stage> --dask threads` sets up the process
        if stage == "ingest":
            ingest(work / f"{kind}.npy", cube, progress=False, **quiet)
        elif stage == "patches":
            mode = dict(mode="frames", binning=int(binning)) if kind == "4dstem" else dict(
                mode="grid", window=32, stride=int(stride))
            write_patches(cube, patches, progress=False, **mode, **quiet)
        elif stage == "train":
            train(patches, checkpoint, epochs=1, **quiet)
        else:
            results = encode(cube, patches, checkpoint, work / "results.zarr", **quiet)
            windows = results["recon_error"].size
            return report(seconds=time.perf_counter() - start, windows=windows)
    report(seconds=time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=32)
    parser.add_argument("--kind", choices=["image", "4dstem"], default="image")
    parser.add_argument("--stride", type=int, default=128, help="grid stride of the image's windows (default: "
                        "128, 1M windows at 32 GiB; 1 for a dense map)")
    parser.add_argument("--binning", type=int, default=4, help="binning of the scan's frames (default: 4, 32x32)")
    parser.add_argument("--workdir", type=Path, default=scratch("bench-out-of-core"))
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, cube = args.workdir / f"{args.kind}.npy", args.workdir / "cube.zarr"
    start = time.perf_counter()
    shape = write_source(source, args.kind, args.gib)
    print(f"source {source}: {shape} uint16, {source.stat().st_size / GIB:.1f} GiB on disk, "
          f"machine RAM {ram:.1f} GiB (written in {time.perf_counter() - start:.0f} s)", flush=True)
    for stage in ("ingest", "patches", "train", "encode"):
        r = measure(__file__, stage, args.workdir, args.kind, args.stride, args.binning)
        rate = f"{r['windows'] / r['seconds']:.0f} windows/s ({r['windows']})" if "windows" in r else ""
        print(f"{stage:8} {r['seconds']:7.0f} s  {args.gib / r['seconds']:.2f} GiB/s of input  "
              f"peak RSS {r['rss_gib']:.2f} GiB = {r['rss_gib'] / ram:.1%} of RAM  {rate}", flush=True)
        if stage == "ingest":
            on_disk = sum(p.stat().st_size for p in cube.rglob("*") if p.is_file()) / GIB
            print(f"cube.zarr: {on_disk:.1f} GiB on disk", flush=True)
            if not args.keep:
                source.unlink()  # the cube holds it now; frees the disk for the stages after
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
