"""The ingest stage: a source file to one labelled Zarr v3 cube, lazily with Dask.

Readers (one per format) return a lazy array and the source's metadata; :func:`ingest` names the
dims, attaches physical coordinates and writes ``data`` chunked at ~32 MB with signal axes whole.
"""
import json
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .stores import check_writable, staged_output

CHUNK_BYTES = 32 * 2**20
DEFAULT_DIMS = {2: ("y", "x"), 4: ("y", "x", "ky", "kx")}
SIGNAL_DIMS = ("energy", "ky", "kx")


def read_npy(path, dataset=None):
    return da.from_array(np.load(path, mmap_mode="r")), {}


def read_tiff(path, dataset=None):
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True)
    with tifffile.TiffFile(path) as tif:
        meta = {tag.name: str(tag.value)[:200] for tag in tif.pages[0].tags.values()}
    return da.from_zarr(zarr.open(store, mode="r")), meta


def read_hdf5(path, dataset=None):
    import h5py

    f = h5py.File(path, "r")  # stays open while Dask reads it
    arrays = []
    f.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
    name = _choose(arrays, dataset, path, "dataset")
    dset = f[name]
    meta = {k: _jsonable(v) for k, v in dset.attrs.items()}
    return da.from_array(dset, chunks=dset.chunks or "auto"), {"dataset": name, **meta}


def read_zarr(path, dataset=None):
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), dict(node.attrs)
    arrays = [name for name, arr in node.arrays() if arr.ndim >= 2]
    name = _choose(arrays, dataset, path, "array")
    return da.from_zarr(node[name]), {"dataset": name, **dict(node[name].attrs)}


READERS = {".npy": read_npy, ".tif": read_tiff, ".tiff": read_tiff, ".h5": read_hdf5,
           ".hdf5": read_hdf5, ".nxs": read_hdf5, ".zarr": read_zarr}


def _choose(names, wanted, path, kind):
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{str(path)!r} has no {kind} {wanted!r} (it has: {', '.join(names) or 'none'})")
        return wanted
    if len(names) != 1:
        raise ValueError(f"{str(path)!r} holds {len(names)} {kind}s with >= 2 dims ({', '.join(names) or 'none'}); "
                         f"pick one with --dataset")
    return names[0]


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def read_source(path, dataset=None):
    """A lazy array and metadata from any supported file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no source file at {str(path)!r}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"unknown format {path.suffix!r} of {str(path)!r}; supported: {', '.join(sorted(READERS))}")
    try:
        return reader(path, dataset)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # truncated or corrupt files raise whatever their library raises
        raise ValueError(f"cannot read {str(path)!r} as {path.suffix[1:]}: {err}") from err


def label(array, *, dims=None, pixel_size=1.0, units="px", metadata=None):
    """Name dims, attach coordinates and chunk: a ``Dataset`` with the cube in ``data``."""
    if array.dtype.kind not in "iuf":
        raise TypeError(f"data must be real numbers, got dtype {array.dtype}")
    if dims is None:
        if array.ndim not in DEFAULT_DIMS:
            raise ValueError(f"{array.ndim}-D data needs --dims, e.g. 'frame,y,x' (image stack) or 'y,x,energy' "
                             f"(spectrum image)")
        dims = DEFAULT_DIMS[array.ndim]
    dims = tuple(dims)
    if len(dims) != array.ndim:
        raise ValueError(f"--dims names {len(dims)} axes ({','.join(dims)}) but the data has {array.ndim}: {array.shape}")
    if not {"y", "x"} <= set(dims):
        raise ValueError(f"--dims must include the scan axes 'y' and 'x', got {','.join(dims)}")
    coords = {}
    for dim, n in zip(dims, array.shape):
        if dim in ("y", "x"):
            coords[dim] = (dim, np.arange(n) * pixel_size, {"units": units, "long_name": f"scan position {dim}"})
        else:
            coords[dim] = (dim, np.arange(n), {"units": "px" if dim != "energy" else "channel"})
    data = array.rechunk(cube_chunks(dims, array.shape, array.dtype.itemsize))
    attrs = {"original_metadata": json.dumps(metadata or {}, default=str)}
    return xr.Dataset({"data": (dims, data, {"long_name": "signal"})}, coords=coords, attrs=attrs)


def cube_chunks(dims, shape, itemsize):
    """Chunks of about ``CHUNK_BYTES`` with signal axes whole, spread evenly over the scan axes."""
    signal = int(np.prod([n for d, n in zip(dims, shape) if d in SIGNAL_DIMS])) * itemsize
    scan = [d for d in dims if d not in SIGNAL_DIMS]
    side = max(1, int((CHUNK_BYTES / signal) ** (1 / len(scan))))
    return tuple(n if d in SIGNAL_DIMS else min(n, side) for d, n in zip(dims, shape))


def ingest(source, out, *, dims=None, dataset=None, pixel_size=1.0, units="px", overwrite=False, progress=True):
    """``rvae ingest``: convert ``source`` to a Zarr v3 cube at ``out``; returns the Dataset."""
    check_writable(out, overwrite)
    array, metadata = read_source(source, dataset)
    dims = dims.split(",") if isinstance(dims, str) else dims
    ds = label(array, dims=dims, pixel_size=pixel_size, units=units, metadata=metadata)
    ds.attrs["source"] = str(Path(source).resolve())
    from .patches import progress_bar

    with staged_output(out, overwrite) as staging, progress_bar(progress):
        try:
            ds.to_zarr(staging, zarr_format=3)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {str(source)!r} to the end: {err}") from err
    return ds
