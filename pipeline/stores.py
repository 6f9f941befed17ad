"""Opening Zarr stores and publishing new ones without ever damaging what is already there.

Whole-store outputs (cube, patch store) are written beside their target and renamed into place
only when complete; an existing target is kept unless ``overwrite=True``, and even then it is
replaced only after the new store has been written in full. Every output is written under an
:func:`output_lock`, so a second writer is refused rather than interleaved, and the leftovers of
a writer that was killed (``.NAME.partial-*``) are removed by the next one. An output is never
one of the stage's inputs, nor inside or around one (:func:`check_distinct`).

A store records how many chunks each of its arrays was written with (``chunks_written``), so a
chunk file lost later is an error when the store is opened, not a silent fill value.
"""
import errno
import fcntl
import os
import shutil
import socket
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

import xarray as xr
import zarr

from .chunk_files import read_chunks, readable_directly


def open_store(path, *, what="store"):
    """Open a Zarr store written by this pipeline as an ``xarray.Dataset`` (lazy, Dask-backed);
    a store whose chunks were counted when written must still have them all."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        ds = xr.open_zarr(path)
    except Exception as err:  # zarr raises many types for a directory that is not a store
        if out_of_resources(err):  # the process's limits, not the store (zarr starts a thread)
            raise
        raise ValueError(f"{str(path)!r} is not a readable Zarr {what}: {err}") from err
    check_chunks(path, ds.attrs.get("chunks_written"), what)
    return ds


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
    if not (as_stored and readable_directly(array)):
        return cube
    all_written = variable in ds.attrs.get("chunks_written", {})
    return cube.copy(data=read_chunks(array, missing_is_fill=not all_written))


def count_chunks(path):
    """``{array name: stored chunks}`` for every array of the store at ``path``."""
    group = zarr.open_group(str(path), mode="r")
    return {name: array.nchunks_initialized for name, array in group.arrays()}


def record_chunks(path):
    """Write into the store's attrs how many chunks each array has now: call when it is complete."""
    zarr.open_group(str(path), mode="r+").attrs["chunks_written"] = count_chunks(path)


def records_match(path, expected):
    """Whether the store at ``path`` records every key of ``expected`` with the same value in its
    attrs (how a stage tells that an existing output is the one it would write)."""
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
    except Exception:  # not a readable store: not up to date
        return False
    return all(attrs.get(key) == value for key, value in expected.items())


def check_chunks(path, recorded, what="store"):
    """Raise ``ValueError`` naming the array and a missing chunk file if the store at ``path``
    has fewer chunks than ``recorded`` when it was written (None: nothing recorded, no check)."""
    if not recorded:
        return
    present = count_chunks(path)
    for name, count in recorded.items():
        if present.get(name, 0) < count:
            missing = _first_missing_chunk(Path(path) / name)
            raise ValueError(f"{what} {str(path)!r} has lost chunks of {name!r}: {present.get(name, 0)} of the "
                             f"{count} written are there{f' ({missing} is missing)' if missing else ''}; "
                             f"restore the store or make it again")


def _first_missing_chunk(array_path):
    array = zarr.open_array(str(array_path), mode="r")
    if not isinstance(array.store, zarr.storage.LocalStore):
        return None
    import itertools

    grid = [-(-n // c) for n, c in zip(array.shape, array.shards or array.chunks)]
    encode = array.metadata.chunk_key_encoding.encode_chunk_key
    for index in itertools.product(*(range(n) for n in grid)):
        key = array_path / encode(index)
        if not key.exists():
            return str(key)
    return None


# Errors only a write can cause: a full disk or quota, a read-only file system, a file too large.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
# What Python and torch say when a process limit (ulimit -v, -u) stops a thread or an allocation.
RESOURCE_MESSAGES = ("can't start new thread", "can't allocate memory", "DefaultCPUAllocator")


def out_of_resources(err):
    """Whether ``err`` says the process ran out of memory or threads (not a fault of a file)."""
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and
                                            any(text in str(err) for text in RESOURCE_MESSAGES))


def damaged_chunk(path):
    """The first chunk file under the store at ``path`` whose CRC-32C does not match, or None."""
    from .chunk_files import checksum_matches
    from .compression import checksummed

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a store: nothing to point at
        return None
    for name, array in group.arrays():
        if not checksummed(array) or array.shards is not None:
            continue
        for chunk in sorted(p for p in (Path(path) / name).rglob("*") if p.is_file() and p.name != "zarr.json"):
            if not checksum_matches(chunk.read_bytes()):
                return str(chunk)
    return None


@contextmanager
def reading(path, what="cube"):
    """Report a failure deep inside a Dask read (a corrupt or truncated chunk) as one clear error.

    An ``OSError`` about a file outside ``path`` (writing an output failed: a full disk, a
    read-only file system) passes through untouched, so it is not blamed on the input.
    """
    try:
        yield
    except ValueError as err:
        if "checksum" not in str(err):
            raise
        found = damaged_chunk(path)  # zarr's message names no chunk: find it (on this error only)
        raise ValueError(f"cannot read {what} {str(path)!r}: " + (f"chunk {found} is damaged (its CRC-32C does not "
                         f"match its contents)" if found else f"a chunk is damaged ({err})") +
                         "; restore the store or make it again") from err
    except (FileNotFoundError, FileExistsError, TypeError, MemoryError, KeyboardInterrupt):
        raise
    except OSError as err:
        if err.errno in WRITE_ERRORS or (err.filename and not is_within(err.filename, path)):
            raise
        raise ValueError(f"cannot read {what} {str(path)!r}: {err.strerror or err}") from err
    except Exception as err:  # codecs and stores raise RuntimeError, KeyError, ...
        if out_of_resources(err):
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot read {what} {str(path)!r}: {type(err).__name__}: {first_line} "
                         f"(a chunk is corrupt or truncated?)") from err


@contextmanager
def writing(path):
    """Report a failure to write (a full disk, a read-only or forbidden path) as an ``OSError``
    that names the output ``path`` and the cause."""
    try:
        yield
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as err:
        if getattr(err, "writing", None):  # already named by an inner writing()
            raise
        error = OSError(err.errno, f"cannot write {str(path)!r}: {err.strerror or err}")
        error.writing = str(path)
        raise error from err


def is_within(path, other):
    """Whether ``path`` is ``other`` or lies inside it (both resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(other))


def check_distinct(outputs, inputs):
    """Refuse an output that is, contains or lies inside any input: ``ValueError`` naming both."""
    for output in outputs:
        for given in inputs:
            if given is None:
                continue
            if is_within(output, given):
                relation = "is" if os.path.realpath(output) == os.path.realpath(given) else "lies inside"
            elif is_within(given, output):
                relation = "contains"
            else:
                continue
            raise ValueError(f"output {str(output)!r} {relation} the input {str(given)!r}; "
                             f"choose an output outside every input (an output never replaces an input)")


def check_writable(path, overwrite):
    """Refuse to replace an existing output unless asked to."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; choose another output or pass --overwrite")


@contextmanager
def output_lock(path):
    """Hold the right to write ``path`` (a lock file beside it, ``.NAME.lock``): a second writer
    is refused with the holder's pid and host. The lock goes with its process, however it ends
    (``flock``), so a killed writer never leaves ``path`` locked; then the leftovers of killed
    writers are removed (:func:`remove_leftovers`)."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise FileExistsError(f"{str(path)!r} is being written by another rvae process ({holder}); "
                                      f"wait for it to end, or stop it") from None
            try:  # the file we locked may have been removed by its last holder meanwhile: lock anew
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    try:
        remove_leftovers(path)
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def remove_leftovers(path):
    """Remove what killed writers of ``path`` left beside it (call with :func:`output_lock` held).

    ``.NAME.partial-*``: an unfinished new output, removed. ``.NAME.old-*``: the previous output
    moved aside while a new one was published; if the new one never arrived it is put back.
    """
    path = Path(path)
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if path.exists() or path.is_symlink():
            _remove(old)
        else:
            os.replace(old, path)
    for partial in path.parent.glob(f".{path.name}.partial-*"):
        _remove(partial)


@contextmanager
def staged_output(path, overwrite=False, locked=False):
    """Yield a temporary sibling path to write to; publish it at ``path`` only on success.

    ``locked``: the caller holds :func:`output_lock` on ``path`` already.
    """
    path = Path(path)
    check_writable(path, overwrite)
    with (nullcontext() if locked else output_lock(path)):
        check_writable(path, overwrite)  # a writer that finished while we waited for the lock
        staging = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            with writing(path):
                yield staging
        except BaseException:
            _remove(staging)
            raise
        with writing(path):
            if path.exists():  # overwrite: move the old one aside first, so a crash here loses nothing
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
                os.replace(staging, path)
                _remove(old)
            else:
                os.replace(staging, path)


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
