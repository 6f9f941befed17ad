"""The patch stage: a cube to a bounded training stack ``patches (sample, channel, py, px)``.

Modes: ``points`` (windows centred on atom columns found by :mod:`pipeline.peaks`), ``grid``
(windows at a stride, optionally log-|FFT| transformed) and ``frames`` (every scan position's
diffraction pattern). Windows are cut with Dask, a block of samples per task, each task reading
only the region of the cube its windows cover. The store also records every position the
encode stage must visit and the :class:`~pipeline.windows.WindowSpec` that turns a cube region
into normalised samples.

Grid and frames modes read the cube exactly once: the samples are stored as cut (and
transformed), while the same Dask graph reduces them to the range and finiteness that the
normalisation needs; readers apply ``(value - offset) / scale`` from the store's attrs. Positions
are ordered cube chunk by cube chunk, so a block of samples needs one or two chunks and the
memory in use stays a few chunks per worker thread, whatever the cube's size.
"""
import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .scheduler import compute
from .stores import check_writable, open_cube, reading, staged_output
from .windows import WindowSpec, grid_centres, inside, window_bounds

CHUNK_BYTES = 16 * 2**20  # patch store chunks (and Dask blocks) of about this size along `sample`
# Zstandard at level 1: nearly the ratio of the default level at a fraction of the cost to write,
# and the store is read every epoch (benchmarks/bench_patches.py measures the write).
PATCH_CODECS = (zarr.codecs.ZstdCodec(level=1),)


def plan_positions(cube, *, mode, window, stride, min_distance, threshold, points=None):
    """All sample positions (row, col) the mode defines on this cube; and the grid shape (or None).

    Positions come in row-major order; :func:`chunk_order` gives the order to read them in.
    """
    shape = cube.shape[:2]
    if mode == "frames":
        rows, cols = np.indices(shape)
        return np.stack([rows.ravel(), cols.ravel()], -1).astype(float), shape
    if window > min(shape):
        raise ValueError(f"window {window} px is larger than the image ({shape[0]} x {shape[1]} px); "
                         f"choose --window <= {min(shape)}")
    if mode == "grid":
        centres, grid_shape = grid_centres(shape, window, stride or window)
        return centres.astype(float), grid_shape
    if points is not None:
        from .points import read_points

        given = read_points(points, cube)
        given = given[inside(given.round().astype(int), shape, window)]
        if len(given) == 0:
            raise ValueError(f"none of the points in {str(points)!r} has a whole {window}-px window inside the image")
        return given, None
    from .peaks import find_atom_columns

    lo, hi, finite = compute(cube.data.min(), cube.data.max(), da.isfinite(cube.data).all(), progress=False)
    if not finite:
        raise ValueError(f"cube {cube.name!r} contains NaN or Inf values; clean or mask them before extracting patches")
    image = cube.data if cube.ndim == 2 else cube.data.sum(axis=-1)  # channels summed to find columns
    if cube.ndim > 2:
        lo, hi = compute(image.min(), image.max(), progress=False)
    found = find_atom_columns(image, min_distance=min_distance, threshold=threshold, intensity_range=(lo, hi))
    found = found[inside(found.round().astype(int), shape, window)]
    if len(found) == 0:
        raise ValueError(f"no atom columns found with a whole {window}-px window inside the image "
                         f"(threshold={threshold}, min_distance={min_distance}); lower --threshold or --window")
    return found, None


def chunk_order(positions, chunks, window=0):
    """Order positions by the cube chunk that holds their window's first pixel.

    Returns the ordering indices and, in that order, each position's chunk number; a block of
    samples never mixes chunks, so it reads one chunk (plus a window's margin), not a band of them.
    """
    start = positions.round().astype(np.int64) - window // 2
    tile = [np.searchsorted(np.cumsum(c), start[:, i], side="right") for i, c in enumerate(chunks[:2])]
    order = np.lexsort((positions[:, 1], positions[:, 0], tile[1], tile[0]))
    return order, (tile[0] * len(chunks[1]) + tile[1])[order]


def check_cube(cube, mode, channels=""):
    """Dims must fit the mode; returns the cube with scan dims first (then ``channel``).

    A spectrum image ``(y, x, energy)`` becomes ``(y, x, channel)`` through ``channels`` (energy
    bands, :mod:`pipeline.channels`) for the window modes.
    """
    if "energy" in cube.dims and mode != "frames":
        if not channels:
            raise ValueError(f"a spectrum image {cube.dims} needs --channels: energy bands to sum into channels, "
                             f"e.g. 1.2:1.6,6.2:6.6 (in the energy axis' units)")
        from .channels import select_channels

        cube = select_channels(cube, channels)
    elif channels:
        raise ValueError(f"--channels picks energy bands of a spectrum image; this cube has dims {cube.dims}")
    expected = {"points": ("y", "x"), "grid": ("y", "x"), "frames": ("y", "x", "ky", "kx")}[mode]
    extra = ("channel",) if "channel" in cube.dims and mode != "frames" else ()
    if set(cube.dims) != set(expected + extra):
        hint = "use --mode frames" if cube.ndim == 4 else "use --mode points or grid"
        raise ValueError(f"mode {mode!r} needs a cube with dims {expected}, got {cube.dims}; {hint}")
    return cube.transpose(*expected, *extra)


def cube_region(spec, data, centres):
    """The (lazy) part of the cube that the samples at integer ``centres`` need, and the centres within it.

    A rectangle of the scan (its frames, in frames mode): plain slices keep Dask's reads whole-chunk.
    """
    (r0, r1), (c0, c1) = window_bounds(centres, spec.window or 1)
    return data[r0:r1, c0:c1], centres - [r0, c0]


def samples_per_chunk(sample_shape, itemsize):
    """Samples in a ~16 MiB chunk: few, large writes and reads, yet many chunks to shuffle."""
    return int(np.clip(CHUNK_BYTES // (int(np.prod(sample_shape)) * itemsize), 64, 16384))


def sample_blocks(spec, cube, positions, tiles, chunk):
    """Lazy samples for ``positions``, one Dask task per ``chunk``: as cut, in the cube's dtype, when
    :attr:`WindowSpec.keeps_dtype` (a uint16 cube makes a uint16 stack); transformed float32 otherwise.

    Each block is a Dask array op on the cube (not a ``delayed`` call, which would embed a private
    copy of the cube's read tasks per block), so every cube chunk is read once however many blocks
    it feeds.
    """
    make, dtype = (spec.cut, cube.dtype) if spec.keeps_dtype else (spec.raw, np.dtype(np.float32))
    tile_starts = np.flatnonzero(np.diff(tiles, prepend=-1))
    bounds = np.unique(np.concatenate([tile_starts, np.arange(0, len(positions), chunk), [len(positions)]]))
    blocks = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = positions[start:stop].round().astype(np.int64)
        region, local = cube_region(spec, cube.data, block)
        shape = (len(block), cube.sizes.get("channel", 1), *spec.sample_shape(cube.shape[2:]))
        blocks.append(da.map_blocks(make, region.rechunk(region.shape), local, meta=np.empty((0,) * 4, dtype),
                                    chunks=tuple((n,) for n in shape),
                                    new_axis=list(range(len(shape) - region.ndim))))
    return da.concatenate(blocks)


def extract_patches(cube, *, mode="points", window=32, stride=None, transform="none", binning=1, channels="",
                    min_distance=3, threshold=0.3, points=None, max_samples=20000, selection="random", seed=0):
    """The patch store's Dataset, lazy: ``patches`` holds the samples as cut and transformed; the
    normalisation is left for :func:`write_patches`, which measures it while it writes."""
    cube = check_cube(cube, mode, channels)
    positions, grid_shape = plan_positions(cube, mode=mode, window=window, stride=stride,
                                           min_distance=min_distance, threshold=threshold, points=points)
    spec = WindowSpec(mode=mode, window=window if mode != "frames" else 0,
                      transform=transform if mode != "frames" else "none", binning=binning,
                      channels=channels if mode != "frames" else "")
    chosen = np.arange(len(positions))
    if max_samples is not None and len(positions) > max_samples:
        if selection == "strided":
            chosen = np.linspace(0, len(positions) - 1, max_samples).round().astype(np.int64)
        else:
            chosen = np.random.default_rng(seed).choice(len(positions), max_samples, replace=False)
    order, tiles = chunk_order(positions[chosen], cube.data.chunks, spec.window)
    chosen = chosen[order]
    chunk = samples_per_chunk(spec.sample_shape(cube.shape[2:]), 4)
    raw = sample_blocks(spec, cube, positions[chosen], tiles, chunk).rechunk((chunk, -1, -1, -1))

    yc, xc = (cube[d].values for d in ("y", "x"))
    chosen_pos = positions[chosen]
    return xr.Dataset(
        {"patches": (("sample", "channel", "py", "px"), raw,
                     {"long_name": "sample as cut and transformed; normalise with (value - offset) / scale"}),
         "position_row": ("position", positions[:, 0], {"units": "px", "long_name": "row of every position to encode"}),
         "position_col": ("position", positions[:, 1], {"units": "px", "long_name": "column of every position to encode"})},
        coords={"row": ("sample", chosen_pos[:, 0], {"units": "px"}),
                "col": ("sample", chosen_pos[:, 1], {"units": "px"}),
                "y": ("sample", np.interp(chosen_pos[:, 0], np.arange(len(yc)), yc), dict(cube["y"].attrs)),
                "x": ("sample", np.interp(chosen_pos[:, 1], np.arange(len(xc)), xc), dict(cube["x"].attrs))},
        attrs={"mode": mode, "stride": int(stride or window), "grid_shape": list(grid_shape or []),
               "image_shape": list(cube.shape[:2]), "normalisation": "normalised = (value - offset) / scale",
               **spec.to_attrs()})


def write_patches(cube_path, out_path, *, variable="data", overwrite=False, progress=True, **options):
    """``rvae patches``: extract and write the patch store in one pass over the cube; returns its Dataset."""
    cube = open_cube(cube_path, variable)
    check_writable(out_path, overwrite)
    with reading(cube_path):
        ds = extract_patches(cube, **options)
    ds.attrs.update(source=str(cube_path), variable=variable)
    raw = ds["patches"].data
    with staged_output(out_path, overwrite) as staging:
        ds.to_zarr(staging, zarr_format=3, compute=False,  # metadata and small variables; samples below
                   encoding={"patches": {"compressors": PATCH_CODECS}})
        # Store the samples with Dask directly and reduce what was stored: one graph, so each block
        # is cut once. (xarray's deferred write optimises its own copy of the graph, which would
        # cut every block a second time for the statistics.)
        stored = da.store(raw, zarr.open_array(str(staging / "patches"), mode="r+"), lock=False,
                          compute=False, return_stored=True)
        with reading(cube_path):
            lo, hi, finite = compute(stored.min(), stored.max(), da.isfinite(stored).all(), progress=progress)
        if not finite:
            raise ValueError(f"cube {str(cube_path)!r} contains NaN or Inf values where samples are cut; "
                             f"clean or mask them before extracting patches")
        spec = WindowSpec.from_attrs(ds.attrs).normalised_by(float(lo), float(hi))
        zarr.open_group(str(staging), mode="r+").attrs.update(spec.to_attrs())
        zarr.consolidate_metadata(str(staging))
        ds.attrs.update(spec.to_attrs())
    return ds
