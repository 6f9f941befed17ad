"""``rvae ingest`` of a 4D-STEM scan in the layouts files come in, against reading the file at all.

Writes a uint16 4D-STEM source ``(y, x, 128, 128)`` of ``--gib`` GiB (detector-like noise) as
``.npy`` and as HDF5: contiguous, chunked a frame per chunk (as detector software writes), and a
frame per chunk compressed with Bitshuffle-LZ4 (Dectris detectors). For each, in a fresh process:

* read: the file's own library (NumPy, h5py) reads the whole file, a row of the scan at a time,
  and sums it: the speed of getting the values out of that file at all;
* ingest: ``rvae ingest`` to a compressed Zarr v3 cube (``--dask threads``), which also writes it;

and prints input GiB/s, ingest / read and peak RSS.

    python benchmarks/bench_ingest.py                 # 2 GiB each: ~2 min, ~7 GB disk
    python benchmarks/bench_ingest.py --gib 8
"""
import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from counts import fill_with_counts
from fresh_process import measure, report
from scratch import scratch

GIB = 2**30
DETECTOR = 128
LAYOUTS = ("npy", "hdf5 contiguous", "hdf5 frame chunks", "hdf5 frame chunks bitshuffle-lz4")


def write_source(path, layout, gib, seed=0):
    """A 4D-STEM scan of about ``gib`` GiB, written a band of scan rows at a time."""
    side = int(np.sqrt(gib * GIB / 2 / DETECTOR**2))
    shape = (side, side, DETECTOR, DETECTOR)
    if layout == "npy":
        data = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    else:
        import h5py
        import hdf5plugin

        options = {} if layout == "hdf5 contiguous" else {"chunks": (1, 1, DETECTOR, DETECTOR)}
        if layout.endswith("bitshuffle-lz4"):
            options.update(hdf5plugin.Bitshuffle(cname="lz4"))
        data = h5py.File(path, "w").create_dataset("entry/data/data", shape=shape, dtype=np.uint16, **options)
    fill_with_counts(data, rows=8, seed=seed)
    data.flush() if layout == "npy" else data.file.close()
    return shape


def worker(task, source, out):
    start = time.perf_counter()
    if task == "read":
        if source.endswith(".npy"):
            data = np.load(source, mmap_mode="r")
        else:
            import h5py
            import hdf5plugin  # noqa: F401

            data = h5py.File(source, "r")["entry/data/data"]
        total = sum(float(np.asarray(data[row]).sum(dtype=np.float64)) for row in range(data.shape[0]))
        assert total > 0
    else:
        from pipeline.ingest import ingest
        from pipeline.scheduler import dask_scheduler

        with dask_scheduler("threads"):  # as `rvae ingest --dask threads` sets up the process
            ingest(source, out, progress=False)
    report(seconds=time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2)
    parser.add_argument("--workdir", type=Path, default=scratch("bench-ingest"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    args.workdir.mkdir(parents=True, exist_ok=True)
    cube = args.workdir / "cube.zarr"
    print(f"{'source':34} {'GiB':>5} {'on disk':>7} {'read GiB/s':>10} {'ingest':>7} {'/read':>6} "
          f"{'peak RSS GiB read/ingest':>25}")
    for layout in LAYOUTS:
        source = args.workdir / ("scan.npy" if layout == "npy" else "scan.h5")
        shape = write_source(source, layout, args.gib)
        gib = np.prod(shape) * 2 / GIB
        read, ingest = (measure(__file__, task, source, cube) for task in ("read", "ingest"))
        print(f"{layout:34} {gib:5.2f} {source.stat().st_size / GIB:7.2f} {gib / read['seconds']:10.2f} "
              f"{gib / ingest['seconds']:7.2f} {read['seconds'] / ingest['seconds']:6.2f} "
              f"{read['rss_gib']:>12.2f}/{ingest['rss_gib']:.2f}", flush=True)
        source.unlink()
        shutil.rmtree(cube)
    print(f"(scan {shape[:2]} of {DETECTOR}x{DETECTOR} uint16 frames; GiB/s of uncompressed input)")


if __name__ == "__main__":
    main()
