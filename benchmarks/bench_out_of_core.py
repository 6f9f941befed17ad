"""A source larger than this machine's memory through ``rvae ingest`` and ``rvae patches``.

Writes a raw ``.npy`` of ``--gib`` GiB (uint16, detector-like noise; default 32 GiB, more than the
RAM of the machines this was written on), an image or (``--kind 4dstem``) a 4D-STEM scan of
128x128 frames, then runs, each in a fresh process, the ingest stage (npy -> compressed Zarr v3
cube) and the patch stage (the default bounded stack: grid windows of the image, frames of the
scan), and prints wall time, input GiB/s and peak RSS as a fraction of the machine's RAM.

    python benchmarks/bench_out_of_core.py --workdir /scratch/ooc      # needs ~2.5x --gib of disk
    python benchmarks/bench_out_of_core.py --kind 4dstem
"""
import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from counts import fill_with_counts
from fresh_process import measure, report

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


def worker(stage, source, out, kind):
    from pipeline.ingest import ingest
    from pipeline.patches import write_patches
    from pipeline.scheduler import dask_scheduler

    start = time.perf_counter()
    with dask_scheduler("threads"):  # as `rvae ingest/patches --dask threads` sets up the process
        if stage == "ingest":
            ingest(source, out, progress=False)
        else:
            write_patches(source, out, mode="frames" if kind == "4dstem" else "grid", window=32, progress=False)
    report(seconds=time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=32)
    parser.add_argument("--kind", choices=["image", "4dstem"], default="image")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out-of-core"))
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, cube, patches = (args.workdir / n for n in (f"{args.kind}.npy", "cube.zarr", "patches.zarr"))
    start = time.perf_counter()
    shape = write_source(source, args.kind, args.gib)
    print(f"source {source}: {shape} uint16, {source.stat().st_size / GIB:.1f} GiB on disk, "
          f"machine RAM {ram:.1f} GiB (written in {time.perf_counter() - start:.0f} s)", flush=True)
    for stage, reads, writes in (("ingest", source, cube), ("patches", cube, patches)):
        r = measure(__file__, stage, reads, writes, args.kind)
        print(f"{stage:8} {r['seconds']:7.0f} s  {args.gib / r['seconds']:.2f} GiB/s of input  "
              f"peak RSS {r['rss_gib']:.2f} GiB = {r['rss_gib'] / ram:.1%} of RAM", flush=True)
    on_disk = sum(p.stat().st_size for p in cube.rglob("*") if p.is_file()) / GIB
    print(f"cube.zarr: {on_disk:.1f} GiB on disk")
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
