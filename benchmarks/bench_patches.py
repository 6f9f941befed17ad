"""Patch extraction against the disk and the decompressor: throughput and peak memory, one run.

Writes compressed cubes (Zarr v3, the ingest stage's chunking and codec) of each size in
``--sizes``, for two data kinds: an image ``(y, x)`` cut by ``grid`` mode (stride = window, every
window kept) and a 4D-STEM cube ``(y, x, ky, kx)`` cut by ``frames`` mode (every pattern kept).
Then, each in a fresh process:

* raw read: Dask reads the whole cube through zarr (``da.from_zarr``), decompresses and reduces
  (sums) it — what any Dask code that must look at every value pays;
* direct read: the same sum over the cube as the pipeline's stages open it (``open_cube``: chunks
  decoded straight from their files, :mod:`pipeline.chunk_files`) — the stricter reference;
* ``rvae patches`` with a bounded training stack (the default ``max_samples`` 20000, random
  positions all over the cube, so every chunk is read), as input GiB/s;
* ``rvae patches`` keeping every position (``max_samples none``): the stack is a full copy of the
  cube, so this also pays for writing as many bytes as it reads; its reference is
* copy: Dask reads the cube and writes it to a new store with the patch store's codec, both
  through zarr — what rewriting every value costs that way;

and prints the ratios to the raw and direct reads, and each process's peak RSS, so memory growth
with cube size is visible (bounded memory means flat RSS). A stack that is a share ``f`` of the cube's
bytes must read the whole cube and write ``f`` of it, so what zarr's reads and writes allow it is
``raw + f * (copy - raw)`` seconds (the raw read for a small stack, the copy for every
position); ``/limit`` is the bounded stack against that. Peak RSS also holds what glibc's
allocator keeps after it is freed, so both ``rvae patches`` runs are repeated under
``tracemalloc``, whose peak is the most the pipeline itself (Python objects and NumPy buffers)
held at once: its live heap. The cubes are read right after they are written, so every side reads
from the page cache as far as it holds them. ``--env`` runs every measured process with the given
environment, e.g. glibc's allocator tunables (README, *What bounds memory*).

    python benchmarks/bench_patches.py                       # 1, 4 and 8 GiB cubes: ~15 min, ~20 GB disk
    python benchmarks/bench_patches.py --sizes 0.25 1        # a quick look
    python benchmarks/bench_patches.py --env GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576
                                        # every measured process under glibc's allocator tunables
"""
import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from fresh_process import measure, report
from scratch import scratch

GIB = 2**30
TASKS = ("raw", "direct", "bounded", "copy", "full")
PATCH_TASKS = ("bounded", "full")  # the `rvae patches` runs, whose live heap is also measured
DETECTOR = 128  # 4D-STEM pattern side


def make_cube(path, kind, gib, seed=0):
    """A uint16 cube of about ``gib`` GiB with detector-like noise, chunked as ingest chunks it."""
    import dask.array as da
    import xarray as xr

    from pipeline.compression import cube_codecs
    from pipeline.ingest import cube_chunks

    itemsize = 2
    if kind == "image":
        side = int(np.sqrt(gib * GIB / itemsize))
        dims, shape = ("y", "x"), (side, side)
    else:
        side = int(np.sqrt(gib * GIB / itemsize / DETECTOR**2))
        dims, shape = ("y", "x", "ky", "kx"), (side, side, DETECTOR, DETECTOR)
    chunks = cube_chunks(dims, shape, np.uint16)
    rng = np.random.default_rng(seed)
    # One block of Poisson counts on a smooth background, rolled per chunk: realistic entropy for the
    # codec, cheap to make at any size.
    base = (rng.poisson(200, size=chunks) + 50 * np.sin(np.arange(chunks[-1]) / 3)).astype(np.uint16)

    def block(block_info=None):
        loc = block_info[None]["chunk-location"]
        piece = base[tuple(slice(0, n) for n in block_info[None]["chunk-shape"])]
        return np.roll(piece, sum(loc) * 7, axis=-1)

    data = da.map_blocks(block, chunks=da.core.normalize_chunks(chunks, shape), dtype=np.uint16)
    coords = {d: np.arange(n, dtype=float) for d, n in zip(dims, shape)}
    xr.Dataset({"data": (dims, data)}, coords=coords).to_zarr(
        path, zarr_format=3, mode="w", encoding={"data": {"compressors": cube_codecs(np.uint16)}})
    return shape


def worker(task, cube, out, traced=False):
    """Run one measurement in this (fresh) process and print seconds, GiB and peak RSS as JSON;
    ``traced`` adds the peak of what ``tracemalloc`` saw allocated (slower: time it elsewhere)."""
    import tracemalloc

    import dask.array as da
    import zarr

    from pipeline.patches import write_patches
    from pipeline.scheduler import dask_scheduler

    with dask_scheduler("threads"):  # as `rvae patches --dask threads` sets up the process
        array = zarr.open_array(f"{cube}/data", mode="r")
        gib = array.nbytes / GIB
        if traced:
            tracemalloc.start()
        start = time.perf_counter()
        if task == "raw":
            da.from_zarr(array).sum(dtype=np.float64).compute()
        elif task == "direct":
            from pipeline.stores import open_cube

            open_cube(cube).data.sum(dtype=np.float64).compute()
        elif task == "copy":
            from pipeline.compression import patch_codecs

            source = da.from_zarr(array)
            target = zarr.create_array(out, shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                                       compressors=patch_codecs(array.dtype), overwrite=True,
                                       config={"write_empty_chunks": True})
            da.store(source, target, lock=False)
        else:
            mode = "grid" if array.ndim == 2 else "frames"
            max_samples = None if task == "full" else 20000
            stack = write_patches(cube, out, mode=mode, window=32, stride=32, max_samples=max_samples,
                                  overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    heap = {"heap_gib": tracemalloc.get_traced_memory()[1] / GIB} if traced else {}
    share = {"share": stack["patches"].nbytes / array.nbytes} if task in PATCH_TASKS else {}
    report(seconds=seconds, gib=gib, **heap, **share)


def assignment(text):
    """``NAME=VALUE`` as a (name, value) pair, for ``--env``."""
    name, sep, value = text.partition("=")
    if not (sep and name):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 8], help="cube sizes in GiB (uncompressed)")
    parser.add_argument("--kinds", nargs="+", default=["image", "4dstem"], choices=["image", "4dstem"])
    parser.add_argument("--workdir", type=Path, default=scratch("bench-patches"))
    parser.add_argument("--env", action="append", default=[], type=assignment, metavar="NAME=VALUE",
                        help="set in every measured process's environment (e.g. glibc's allocator tunables)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, traced=args.traced)

    env = dict(args.env)
    if env:
        print("measured processes run with " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.kinds:
        for gib in args.sizes:
            cube, out = args.workdir / f"{kind}-{gib:g}.zarr", args.workdir / f"{kind}-{gib:g}-patches.zarr"
            start = time.perf_counter()
            shape = make_cube(cube, kind, gib)
            on_disk = sum(p.stat().st_size for p in cube.rglob("*") if p.is_file()) / GIB
            print(f"{kind} cube {shape} uint16: {gib:g} GiB, {on_disk:.2f} GiB on disk "
                  f"(written in {time.perf_counter() - start:.0f} s)", flush=True)
            runs = {}
            for task in TASKS:  # each writes a fresh output: none pays for deleting the last one's
                shutil.rmtree(out, ignore_errors=True)
                runs[task] = measure(__file__, task, cube, out, env=env)
            for task in PATCH_TASKS:
                shutil.rmtree(out, ignore_errors=True)
                runs[task]["heap_gib"] = measure(__file__, task, cube, out, "--traced", env=env)["heap_gib"]
            rows.append((kind, gib, runs))
            print("  " + ", ".join(f"{task} {r['gib'] / r['seconds']:.2f} GiB/s (peak RSS {r['rss_gib']:.2f} GiB)"
                                   for task, r in runs.items())
                  + "; live heap " + ", ".join(f"{t} {runs[t]['heap_gib']:.2f} GiB" for t in PATCH_TASKS), flush=True)
            shutil.rmtree(cube)
            shutil.rmtree(out, ignore_errors=True)

    print(f"\n{'cube':8} {'GiB':>5} {'raw GiB/s':>10} {'direct':>7} {'bounded':>8} {'/raw':>5} {'/direct':>8} "
          f"{'share':>6} {'/limit':>7} {'copy':>6} {'full':>6} {'/raw':>5} {'/direct':>8} {'/copy':>6} "
          f"{'peak RSS GiB raw/direct/bounded/copy/full':>42} {'live heap GiB bounded/full':>27}")
    for kind, gib, runs in rows:
        raw, direct, bounded, copy, full = (runs[t]["gib"] / runs[t]["seconds"] for t in TASKS)
        share = runs["bounded"]["share"]
        limit = runs["raw"]["seconds"] + share * (runs["copy"]["seconds"] - runs["raw"]["seconds"])
        rss = "/".join(f"{runs[t]['rss_gib']:.2f}" for t in TASKS)
        live = "/".join(f"{runs[t]['heap_gib']:.2f}" for t in PATCH_TASKS)
        print(f"{kind:8} {gib:5g} {raw:10.2f} {direct:7.2f} {bounded:8.2f} {bounded / raw:5.2f} "
              f"{bounded / direct:8.2f} {share:6.0%} {limit / runs['bounded']['seconds']:7.2f} {copy:6.2f} "
              f"{full:6.2f} {full / raw:5.2f} {full / direct:8.2f} {full / copy:6.2f} {rss:>42} {live:>27}")
    print("(GiB/s of input; raw = through zarr, direct = as the stages read; bounded = max_samples 20000, full =\n"
          " every position; share = the bounded stack's bytes over the cube's; /limit = the bounded stack against\n"
          " raw + share * (copy - raw) seconds, all three through zarr)")
    for kind in args.kinds:
        sizes = [runs for k, _, runs in rows if k == kind]
        if len(sizes) > 1:
            first, last = sizes[0], sizes[-1]
            growth = ", ".join(f"{t} {last[t]['rss_gib'] / first[t]['rss_gib'] - 1:+.0%}" for t in TASKS)
            live = ", ".join(f"{t} {last[t]['heap_gib'] / first[t]['heap_gib'] - 1:+.0%}" for t in PATCH_TASKS)
            print(f"{kind}: from {args.sizes[0]:g} to {args.sizes[-1]:g} GiB, peak RSS: {growth}; live heap: {live}")


if __name__ == "__main__":
    main()
