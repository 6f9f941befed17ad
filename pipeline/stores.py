"""Opening Zarr stores and publishing new ones without ever damaging what is already there.

Whole-store outputs (cube, patch store) are written beside their target and renamed into place
only when complete; an existing target is kept unless ``overwrite=True``, and even then it is
replaced only after the new store has been written in full.
"""
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import xarray as xr
import zarr

from .chunk_files import read_chunks, readable_directly


def open_store(path, *, what="store"):
    """Open a Zarr store written by this pipeline as an ``xarray.Dataset`` (lazy, Dask-backed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        return xr.open_zarr(path)
    except Exception as err:  # zarr raises many types for a directory that is not a store
        raise ValueError(f"{str(path)!r} is not a readable Zarr {what}: {err}") from err


def open_cube(path, variable="data"):
    """The cube's data variable as a lazy ``DataArray``, its chunks read straight from their files
    where :mod:`pipeline.chunk_files` can (whole chunks, as every Dask stage reads them)."""
    ds = open_store(path, what="cube")
    if variable not in ds.data_vars:
        raise ValueError(f"cube {str(path)!r} has no variable {variable!r} "
                         f"(it has: {', '.join(ds.data_vars) or 'none'}); choose one with --variable")
    cube = ds[variable]
    array = zarr.open_array(Path(path) / variable, mode="r")
    # Values that xarray decodes (CF scale and offset, masked fill values) stay with xarray's reader.
    as_stored = cube.dtype == array.dtype and not {"scale_factor", "add_offset"} & cube.encoding.keys()
    return cube.copy(data=read_chunks(array)) if as_stored and readable_directly(array) else cube


@contextmanager
def reading(path, what="cube"):
    """Report a failure deep inside a Dask read (a corrupt or truncated chunk) as one clear error."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # codecs and stores raise RuntimeError, OSError, KeyError, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot read {what} {str(path)!r}: {type(err).__name__}: {first_line} "
                         f"(a chunk is corrupt or truncated?)") from err


def check_writable(path, overwrite):
    """Refuse to replace an existing output unless asked to."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; choose another output or pass --overwrite")


@contextmanager
def staged_output(path, overwrite=False):
    """Yield a temporary sibling path to write to; publish it at ``path`` only on success."""
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    if path.exists():  # overwrite: move the old one aside first, so a crash here loses nothing
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(staging, path)
        _remove(old)
    else:
        os.replace(staging, path)


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
