"""The ingest stage: a source file to one labelled Zarr v3 cube, lazily with Dask.

Readers (one per format) return a :class:`Source`: the data (a lazy array, or a file read by
position), the source's metadata and, where the file is calibrated, each axis's name, scale,
offset and units. npy, tiff, hdf5/NeXus and zarr are read here; every other format rosettasciio
knows (dm3/dm4, emd, bcf, mib, blo, HyperSpy files, ...) through its lazy readers. :func:`ingest`
names the dims, attaches physical coordinates and writes ``data`` in chunks of at most 32 MiB with
signal axes whole, made of whole chunks of the source's own, and optionally grouped into shards.
"""
import importlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .compression import cube_codecs
from .scheduler import compute
from .stores import (
    check_chunks,
    check_distinct,
    check_writable,
    open_store,
    reading,
    record_chunks,
    records_match,
    staged_output,
)

CHUNK_BYTES = 32 * 2**20
DEFAULT_DIMS = {2: ("y", "x"), 4: ("y", "x", "ky", "kx")}
SIGNAL_DIMS = ("energy", "ky", "kx")
# Dims of a calibrated file by its (navigation, signal) axis counts.
DIMS_BY_AXES = {(0, 2): ("y", "x"), (1, 2): ("frame", "y", "x"), (2, 1): ("y", "x", "energy"),
                (2, 2): ("y", "x", "ky", "kx")}


@dataclass
class Source:
    """What a reader found: the data, the file's metadata, and per-axis calibration if any.

    ``data`` is a Dask array (formats read through Dask: zarr, compressed tiff, rosettasciio's) or,
    for files read by position (npy, hdf5, uncompressed tiff), an array with ``shape``, ``dtype``
    and ``__getitem__`` that :meth:`to_dask` reads straight in the cube's chunks.
    """
    data: object
    metadata: dict = field(default_factory=dict)
    axes: list = field(default_factory=list)  # per array axis: {"dim", "scale", "offset", "units"}

    @property
    def file_chunks(self):
        """The shape of the file's own chunks, or None (contiguous): what a cube chunk should be made of."""
        return self.data.chunksize if isinstance(self.data, da.Array) else getattr(self.data, "chunks", None)

    def to_dask(self, chunks):
        """The data as a Dask array in ``chunks``. A file read by position is read in exactly those
        pieces: nothing is read twice, merged or held back for a rechunk."""
        if isinstance(self.data, da.Array):
            return self.data.rechunk(chunks)
        return da.from_array(self.data, chunks=chunks)


class _MappedFile:
    """Uncompressed data lying in one run of a file (``.npy``, contiguous TIFF), read piece by
    piece with positioned reads.

    ``open_map()`` gives the file as a read-only NumPy memory map: its layout, and a way to read
    keys other than plain slices. ``dask.array.from_array`` copies arrays it is given (a memory
    map included: the whole file into memory); an object with only shape, dtype and
    ``__getitem__`` is read chunk by chunk. Reads go through ``os.preadv`` into the piece's own
    buffer, not through the memory map, whose touched file pages count as this process's memory
    (0.57 of a 0.74 GiB peak ingesting a 4 GiB ``.npy``).
    """

    def __init__(self, path, open_map, chunks=None):
        self.path, self.open_map, self.chunks = path, open_map, chunks  # chunks: a TIFF page, if any
        try:
            mapped = open_map()
        except ValueError as err:  # numpy's, without the file's name ("mmap length is greater than file size")
            raise ValueError(f"cannot read {str(path)!r}: {err}") from err
        self.shape, self.dtype, self.ndim = mapped.shape, mapped.dtype, mapped.ndim
        self.offset, self.strides, self.c_order = mapped.offset, mapped.strides, mapped.flags.c_contiguous

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        plain = len(key) == self.ndim and all(isinstance(k, slice) and k.step in (None, 1) for k in key)
        if not (plain and self.c_order):  # anything else, rare, through the memory map
            return np.array(self.open_map()[key])
        ranges = [k.indices(n)[:2] for k, n in zip(key, self.shape)]
        out = np.empty([stop - start for start, stop in ranges], self.dtype)
        if out.size == 0:
            return out
        # Axes read whole at the end, with the one before them, are contiguous runs in the file.
        first = self.ndim - 1
        while first > 0 and ranges[first] == (0, self.shape[first]):
            first -= 1
        runs = out.reshape(-1, int(np.prod(out.shape[first:], dtype=np.int64)))
        starts = [start for start, _ in ranges]
        positions = [self.offset + sum((start + i) * stride
                                       for start, i, stride in zip(starts, (*index, 0), self.strides))
                     for index in np.ndindex(*out.shape[:first])]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for position in positions:  # ask for every run at once: the disk serves them in parallel
                os.posix_fadvise(fd, position, runs[0].nbytes, os.POSIX_FADV_WILLNEED)
            for run, position in zip(runs, positions):
                if os.preadv(fd, [run], position) != run.nbytes:
                    raise ValueError(f"{self.path} is truncated: it ends before the data its header describes")
        finally:
            os.close(fd)
        return out


def read_npy(path, dataset=None):
    return Source(_MappedFile(path, partial(np.load, path, mmap_mode="r")))


# tifffile's warnings that it could not reach every page, after which it reads on with fewer (a
# truncated 10-page stack becomes one image); its other warnings (odd vendor tags) leave the data whole.
TIFF_DAMAGE = ("invalid page offset", "failed to reshape")


@contextmanager
def _damage_refused(path):
    """Refuse a TIFF whose pages tifffile could not all reach, in one line, instead of reading on."""
    damage = []

    def hold_damage(record):
        if any(sign in record.getMessage() for sign in TIFF_DAMAGE):
            damage.append(record.getMessage())
            return False  # said once, below, instead of printed
        return True

    log = logging.getLogger("tifffile")
    log.addFilter(hold_damage)
    try:
        yield
    finally:
        log.removeFilter(hold_damage)
    if damage:
        raise ValueError(f"{str(path)!r} is damaged: {damage[0]}")


def read_tiff(path, dataset=None):
    import tifffile
    import zarr

    with _damage_refused(path), tifffile.TiffFile(path) as tif:
        meta = {tag.name: str(tag.value)[:200] for tag in tif.pages[0].tags.values()}
        series = tif.series[0]
        contiguous = series.dataoffset is not None
        page = (1,) * (len(series.shape) - len(series.keyframe.shape)) + series.keyframe.shape
    if contiguous:  # uncompressed in one run, often as one strip: the whole image would be one chunk
        return Source(_MappedFile(path, partial(tifffile.memmap, path, mode="r"), chunks=page), meta)
    return Source(da.from_zarr(zarr.open(tifffile.imread(path, aszarr=True), mode="r")), meta)


def read_hdf5(path, dataset=None):
    import h5py

    # registers the filters detector files are compressed with (Bitshuffle-LZ4, Blosc, Zstd, ...)
    import hdf5plugin  # noqa: F401

    f = h5py.File(path, "r")  # stays open while Dask reads it
    if f.attrs.get("file_format") == "HyperSpy":
        f.close()
        return read_rosettasciio(path, dataset, plugin="rsciio.hspy")
    arrays = []
    f.visititems(lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
    name = _choose(arrays, dataset, path, "dataset")
    dset = f[name]
    meta = {k: _jsonable(v) for k, v in dset.attrs.items()}
    return Source(dset, {"dataset": name, **meta})


def read_zarr(path, dataset=None):
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group):  # a store of this pipeline says how many chunks it was written with
        check_chunks(path, node.attrs.get("chunks_written"), "source")
    if isinstance(node, zarr.Array):
        return Source(da.from_zarr(node), dict(node.attrs))
    arrays = [name for name, arr in node.arrays() if arr.ndim >= 2]
    name = _choose(arrays, dataset, path, "array")
    return Source(da.from_zarr(node[name]), {"dataset": name, **dict(node[name].attrs)})


def read_rosettasciio(path, dataset=None, plugin=None):
    """Any format rosettasciio reads, lazily; ``dataset`` picks one of several signals (index or title)."""
    reader = importlib.import_module(plugin or _rosettasciio_plugin(path.suffix)).file_reader
    signals = [s for s in reader(str(path), lazy=True) if np.ndim(s["data"]) >= 2]
    names = [str(i) for i in range(len(signals))]
    titles = [s.get("metadata", {}).get("General", {}).get("title", "") for s in signals]
    if dataset in titles and dataset not in names:
        dataset = names[titles.index(dataset)]
    listing = [f"{n} = {t or 'untitled'} {tuple(np.shape(s['data']))}" for n, t, s in zip(names, titles, signals)]
    chosen = signals[int(_choose(names, dataset, path, "signal", listing))]
    axes = sorted(chosen["axes"], key=lambda a: a.get("index_in_array", 0))
    data = da.asarray(chosen["data"])
    spectral = [i for i, a in enumerate(axes) if _spectral(a)]
    decided = None
    if len(spectral) == 1 and len(axes) in (2, 3):  # a spectrum image, or a line scan: the spectrum last
        scan = [i for i in range(len(axes)) if i != spectral[0]]
        data = data.transpose(*scan, spectral[0])
        axes = [axes[i] for i in scan] + [axes[spectral[0]]]
        dims = ("y", "x", "energy") if len(scan) == 2 else ("x", "energy")
        decided = (f"axes: {_describe(axes[-1])} is the spectrum (by its {_spectral(axes[-1])}); "
                   f"{', '.join(_describe(a) for a in axes[:-1])} the scan")
        if len(scan) == 1:  # a line scan: a scan row of one
            data, dims = data[None], ("y", "x", "energy")
            axes = [{"name": "y", "navigate": True}] + axes
            decided += " (a line scan: y has one position)"
    else:
        counts = (sum(bool(a.get("navigate")) for a in axes), sum(not a.get("navigate") for a in axes))
        dims = DIMS_BY_AXES.get(counts, (None,) * len(axes))
    calibration = [{"dim": dim, "scale": float(a.get("scale", 1.0)), "offset": float(a.get("offset", 0.0)),
                    "units": _units(a), "name": a.get("name")} for dim, a in zip(dims, axes)]
    metadata = {"reader": f"rosettasciio {reader.__module__}", "metadata": chosen.get("metadata", {}),
                "original_metadata": chosen.get("original_metadata", {})}
    if decided:
        metadata["axes_decision"] = decided
    return Source(data, metadata, calibration)


SPECTRAL_UNITS = {"ev", "kev", "mev", "1/cm", "cm-1", "cm^-1", "thz", "ghz"}
SPECTRAL_NAMES = ("energy", "wavelength", "raman", "wavenumber", "frequency", "eels", "edx", "eds")


def _spectral(axis):
    """Why an axis is a spectrum's (its ``name`` or ``units``), or "" if it is not: the navigate
    flags alone do not tell (rosettasciio marks a Gatan EELS SI's energy axis as navigation)."""
    if str(axis.get("units") or "").strip().lower().replace("µ", "u") in SPECTRAL_UNITS:
        return "units"
    if any(word in str(axis.get("name") or "").lower() for word in SPECTRAL_NAMES):
        return "name"
    return ""


def _describe(axis):
    return f"'{axis.get('name') or '?'}' ({axis.get('size', '?')}, {axis.get('units') or 'no units'})"


def _rosettasciio_plugin(suffix):
    import rsciio

    for plugin in rsciio.IO_PLUGINS:
        if suffix[1:].lower() in (e.lower() for e in plugin["file_extensions"]):
            return plugin["api"]
    return None


def _units(axis):
    units = axis.get("units")
    if units not in (None, "", "<undefined>"):
        return str(units)
    return "px" if (axis.get("scale", 1.0), axis.get("offset", 0.0)) == (1.0, 0.0) else "unknown"


READERS = {".npy": read_npy, ".tif": read_tiff, ".tiff": read_tiff, ".h5": read_hdf5,
           ".hdf5": read_hdf5, ".nxs": read_hdf5, ".zarr": read_zarr}


def _choose(names, wanted, path, kind, listing=None):
    listing = ", ".join(listing or names) or "none"
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{str(path)!r} has no {kind} {wanted!r} (it has: {listing})")
        return wanted
    if len(names) != 1:
        raise ValueError(f"{str(path)!r} holds {len(names)} {kind}s with >= 2 dims ({listing}); "
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
    if reader is None and _rosettasciio_plugin(path.suffix):
        reader = read_rosettasciio
    if reader is None:
        raise ValueError(f"unknown format {path.suffix!r} of {str(path)!r}; supported: {', '.join(sorted(READERS))} "
                         f"and rosettasciio's formats (dm3, dm4, emd, bcf, mib, blo, ...)")
    try:
        return reader(path, dataset)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # truncated or corrupt files raise whatever their library raises
        raise ValueError(f"cannot read {str(path)!r} as {path.suffix[1:]}: {err}") from err


def label(source, *, dims=None, pixel_size=None, units=None, signal_pixel_size=None, signal_units=None,
          shard=None):
    """Name dims, attach coordinates and chunk: a ``Dataset`` with the cube in ``data``.

    Dims and calibration come from the file where it has them; ``dims``, ``pixel_size`` and
    ``units`` (scan axes) and ``signal_pixel_size``, ``signal_units`` (detector or energy axes)
    override it. Uncalibrated axes count pixels (or energy channels).
    ``shard``: chunks per scan axis in each shard file; ``data``'s encoding carries the layout.
    """
    array = source.data
    if array.dtype.kind not in "iuf":
        raise TypeError(f"data must be real numbers, got dtype {array.dtype}")
    if array.ndim < 2 or 0 in array.shape:
        raise ValueError(f"the data has shape {tuple(array.shape)}: a cube needs at least 2 axes (y, x), none of them "
                         f"empty")
    calibration = source.axes or [{}] * array.ndim
    if dims is None:
        dims = tuple(a.get("dim") for a in calibration)
        if None in dims:
            if array.ndim not in DEFAULT_DIMS:
                raise ValueError(f"{array.ndim}-D data needs --dims, e.g. 'frame,y,x' (image stack) or "
                                 f"'y,x,energy' (spectrum image)")
            dims = DEFAULT_DIMS[array.ndim]
    dims = tuple(dims)
    if len(dims) != array.ndim:
        raise ValueError(f"--dims names {len(dims)} axes ({','.join(dims)}) but the data has {array.ndim}: "
                         f"{array.shape}")
    if len(set(dims)) < len(dims):
        raise ValueError(f"--dims names an axis twice ({','.join(dims)}); each name once, e.g. 'frame,y,x'")
    if not {"y", "x"} <= set(dims):
        raise ValueError(f"--dims must include the scan axes 'y' and 'x', got {','.join(dims)}")
    coords = {dim: _coordinate(dim, n, axis, *((pixel_size, units) if dim in ("y", "x") else
                                               (signal_pixel_size, signal_units)))
              for dim, n, axis in zip(dims, array.shape, calibration)}
    chunks = cube_chunks(dims, array.shape, array.dtype, source.file_chunks)
    layout = {"chunks": chunks}
    if shard:
        layout["shards"] = tuple(c if d in SIGNAL_DIMS else min(c * shard, -(-n // c) * c)
                                 for c, n, d in zip(chunks, array.shape, dims))
    # zarr-python writes a shard whole: a write of part of one loses the rest, so each Dask
    # piece is a whole shard
    data = source.to_dask(layout.get("shards", chunks))
    attrs = {"original_metadata": json.dumps(source.metadata, default=str)}
    what = {"long_name": "detector counts" if array.dtype.kind in "iu" else "detector signal",
            "units": "counts" if array.dtype.kind in "iu" else "1"}
    return xr.Dataset({"data": (dims, data, what, layout)}, coords=coords, attrs=attrs)


def _coordinate(dim, n, axis, pixel_size, units):
    """A dim's coordinate: the file's calibration, or ``pixel_size`` and ``units`` where given
    (then the offset is 0 for scan axes and the centre of the axis for detector axes)."""
    scale, offset, unit = axis.get("scale", 1.0), axis.get("offset", 0.0), axis.get("units", "px")
    if dim == "energy" and not axis:
        unit = "channel"
    if pixel_size is not None:
        scale, offset = pixel_size, -(n // 2) * pixel_size if dim in ("ky", "kx") else 0.0
    unit = units or unit
    if dim in ("y", "x"):
        return (dim, offset + np.arange(n) * scale, {"units": unit, "long_name": f"scan position {dim}"})
    names = {"ky": "detector position ky", "kx": "detector position kx", "energy": "energy", "frame": "frame"}
    return (dim, offset + np.arange(n) * scale, {"units": unit, "long_name": axis.get("name") or names.get(dim, dim)})


def cube_chunks(dims, shape, dtype, file_chunks=None):
    """Chunks of at most ``CHUNK_BYTES`` with signal axes whole, spread evenly over the scan axes
    and, where the source file has chunks of its own, whole multiples of them (a file chunk cut
    between two cube chunks would be read and decompressed twice)."""
    wanted = tuple(-1 if d in SIGNAL_DIMS else "auto" for d in dims)
    chunks = da.core.normalize_chunks(wanted, shape, limit=CHUNK_BYTES, dtype=np.dtype(dtype),
                                      previous_chunks=file_chunks)
    return tuple(c[0] for c in chunks)


def ingest(source, out, *, dims=None, dataset=None, pixel_size=None, units=None, signal_pixel_size=None,
           signal_units=None, shard=None, overwrite=False,
           reuse=False, check_only=False, progress=True, log=print):
    """``rvae ingest``: convert ``source`` to a Zarr v3 cube at ``out``; returns the Dataset.

    ``reuse``: an existing cube ingested from this same file (path, size, modification time) with
    these same options is kept (``rvae run`` continuing a run). ``check_only``: write nothing;
    return whether ``reuse`` would keep the cube at ``out``.
    """
    check_distinct([out], [source])
    options = {"dims": dims, "dataset": dataset, "pixel_size": pixel_size, "units": units, "shard": shard}
    if signal_pixel_size is not None or signal_units is not None:  # (absent: records of older stores still match)
        options.update(signal_pixel_size=signal_pixel_size, signal_units=signal_units)
    if not Path(source).exists():
        raise FileNotFoundError(f"no source file at {str(source)!r}")
    stat = Path(source).stat()
    record = {"source": str(Path(source).resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
              "options": json.dumps(options, sort_keys=True)}
    if check_only:
        return records_match(out, record)
    if reuse and records_match(out, record):
        log(f"{out}: up to date (ingested from this file with these options), kept")
        return open_store(out, what="cube")
    check_writable(out, overwrite)
    dims = dims.split(",") if isinstance(dims, str) else dims
    found = read_source(source, dataset)
    if "axes_decision" in found.metadata:
        log(found.metadata["axes_decision"])
    ds = label(found, dims=dims, pixel_size=pixel_size, units=units,
               signal_pixel_size=signal_pixel_size, signal_units=signal_units, shard=shard)
    ds.attrs.update(record)
    with staged_output(out, overwrite) as staging:
        with reading(source, "source"):
            # write_empty_chunks: every chunk is written without zarr first checking it against the fill
            # value, a pass that costs more than compressing it.
            encoding = {"data": {**ds["data"].encoding, "compressors": cube_codecs(ds["data"].dtype)}}
            compute(ds.to_zarr(staging, zarr_format=3, compute=False, write_empty_chunks=True, encoding=encoding),
                    progress=progress)
        record_chunks(staging)
    return ds
