"""The patch stage: a cube to a bounded training stack ``patches (sample, channel, py, px)``.

Modes: ``points`` (windows centred on atom columns found by :mod:`pipeline.peaks`), ``grid``
(windows at a stride, optionally log-|FFT| transformed), ``frames`` (every scan position's
diffraction pattern) and ``spectra`` (every scan position's spectrum over an energy range, a row
of channels: :mod:`pipeline.spectra`). Windows are cut with Dask, a block of samples per task, each task reading
only the region of the cube its windows cover. The store also records every position the
encode stage must visit and the :class:`~pipeline.windows.WindowSpec` that turns a cube region
into normalised samples.

Grid and frames modes read the cube exactly once: the samples are stored as cut (and
transformed), while the same Dask graph reduces them to the range and finiteness that the
normalisation needs; readers apply ``(value - offset) / scale`` from the store's attrs. Positions
are ordered cube chunk by cube chunk, so a block of samples needs one or two chunks and the
memory in use stays a few chunks per worker thread, whatever the cube's size.
"""
import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from scipy import ndimage

from . import provenance
from .compression import patch_codecs
from .scheduler import compute
from .stores import (
    check_distinct,
    check_writable,
    open_cube,
    open_store,
    reading,
    record_chunks,
    records_match,
    staged_output,
)
from .windows import ScanGrid, WindowSpec, inside, window_bounds

# min_distance="auto", in lattice spacings: a column's search box then holds none of the other sublattices'
# columns (at 1/2 and 1/sqrt(2) spacings in a perovskite), so every window is centred alike
COLUMN_SEPARATION = 0.6
CHUNK_BYTES = 16 * 2**20  # patch store chunks (and Dask blocks) of about this size along `sample`
# Each sample's centre and coordinates: few, large chunks (a chunk per sample chunk made thousands
# of tiny writes, which cost as much as writing the samples of a small stack).
COORD_CHUNK = 2**20


def plan_positions(cube, *, mode, window, stride, min_distance, threshold, polarity="bright", points=None):
    """Every sample position the mode defines on this cube, and attrs recording how atom columns
    were found: a :class:`ScanGrid` (grid, frames), never materialised, or an ``(N, 2)`` array of
    (row, col) (points)."""
    shape = cube.shape[:2]
    if mode in ("frames", "spectra"):  # every scan position
        return ScanGrid(range(shape[0]), range(shape[1])), {}
    if window > min(shape):
        raise ValueError(f"window {window} px is larger than the image ({shape[0]} x {shape[1]} px); "
                         f"choose --window <= {min(shape)}")
    if mode == "grid":
        return ScanGrid.of_windows(shape, window, stride or window), {}
    if points is not None:
        from .points import read_points

        given = read_points(points, cube)
        given = given[inside(given.round().astype(int), shape, window)]
        if len(given) == 0:
            raise ValueError(f"none of the points in {str(points)!r} has a whole {window}-px window inside the image")
        return given, {}
    from .peaks import find_atom_columns

    image = cube.data if cube.ndim == 2 else cube.data.sum(axis=-1)  # channels summed to find columns
    finite, skew = compute(da.isfinite(cube.data).all(), skewness(image), progress=False)
    if not finite:
        raise ValueError(f"cube {cube.name!r} contains NaN or Inf values; clean or mask them before extracting patches")
    if polarity == "auto":  # bright columns on a dark background skew the intensities high; dark ones, low
        polarity = "dark" if skew < 0 else "bright"
    if polarity == "dark":  # columns are minima: find the maxima of the negated image
        image = -image
    found = find_atom_columns(image, min_distance=min_distance, threshold=threshold,
                              intensity_range=typical_range(image))
    found = found[inside(found.round().astype(int), shape, window)]
    if len(found) == 0:
        raise ValueError(f"no atom columns found with a whole {window}-px window inside the image "
                         f"(threshold={threshold}, min_distance={min_distance}, polarity={polarity}); lower "
                         f"--threshold or --window")
    return found, {"columns_polarity": polarity,
                   "columns_choice": f"{len(found)} {polarity} columns (intensity skewness {skew:+.2f}), at least "
                                     f"{min_distance} px apart"}


def typical_range(image, tile=128, count=16):
    """The 0.5th and 99.5th percentiles of the (lightly smoothed) intensities of sampled tiles: the
    range a column threshold is a fraction of. Not the minimum and maximum: a few dopant columns
    several times brighter than the host's would put every host column under the threshold."""
    from .lattice import sample_tiles

    smooth = ndimage.gaussian_filter(sample_tiles(image, tile, count), (0, 1, 1))
    return tuple(np.percentile(smooth, [0.5, 99.5]))


def skewness(image):
    """The skewness of a (Dask) image's intensities, from its first three moments in one pass."""
    x = image.astype(np.float64)
    m1, m2, m3 = ((x ** k).mean() for k in (1, 2, 3))
    variance = m2 - m1 ** 2
    return (m3 - 3 * m1 * m2 + 2 * m1 ** 3) / da.maximum(variance, 1e-300) ** 1.5


def positions_to_encode(patch_store):
    """Every position the encode stage visits: a :class:`ScanGrid` (grid and frames modes, from the
    store's attrs) or the points' ``(N, 2)`` (row, col)."""
    if patch_store.attrs["mode"] == "points":
        return np.stack([patch_store["position_row"].values, patch_store["position_col"].values], -1)
    return ScanGrid.from_attrs(patch_store.attrs)


def to_physical(px, axis):
    """Pixel positions ``px`` as values of the coordinate ``axis`` (linear between pixels)."""
    return np.interp(px, np.arange(len(axis)), axis)


def chunk_of(starts, chunks):
    """Index of the chunk (of sizes ``chunks``) holding each start pixel."""
    return np.searchsorted(np.cumsum(chunks), starts, side="right")


def point_blocks(positions, chunks, window, size):
    """Positions as blocks of at most ``size``, ordered by the cube chunk that holds their window's
    first pixel: a block never mixes chunks, so it reads one chunk (plus a window's margin)."""
    start = positions.round().astype(np.int64) - window // 2
    tile = [chunk_of(start[:, i], c) for i, c in enumerate(chunks[:2])]
    order = np.lexsort((positions[:, 1], positions[:, 0], tile[1], tile[0]))
    tiles = (tile[0] * len(chunks[1]) + tile[1])[order]
    bounds = np.union1d(np.flatnonzero(np.diff(tiles, prepend=-1)), np.arange(0, len(order), size))
    return [positions[order[a:b]] for a, b in zip(bounds, [*bounds[1:], len(order)])]


def grid_blocks(grid, chunks, window, size):
    """Every position of ``grid`` as sub-grids of at most ``size``, in the same chunk order as
    :func:`point_blocks`, without holding a position array."""
    def by_chunk(centres, chunks):
        tile = chunk_of(np.asarray(centres) - window // 2, chunks)
        bounds = np.flatnonzero(np.diff(tile, prepend=-1))
        return [centres[a:b] for a, b in zip(bounds, [*bounds[1:], len(centres)])]

    blocks = []
    for rows in by_chunk(grid.rows, chunks[0]):
        for cols in by_chunk(grid.cols, chunks[1]):
            if len(cols) > size:
                blocks += [ScanGrid(rows[i:i + 1], cols[j:j + size])
                           for i in range(len(rows)) for j in range(0, len(cols), size)]
            else:
                step = size // len(cols)
                blocks += [ScanGrid(rows[i:i + step], cols) for i in range(0, len(rows), step)]
    return blocks


def check_cube(cube, mode, channels=""):
    """Dims must fit the mode; returns the cube with scan dims first (then ``channel``).

    A spectrum image ``(y, x, energy)`` becomes ``(y, x, channel)`` through ``channels`` (energy
    bands, :mod:`pipeline.channels`) for the window modes.
    """
    if mode == "spectra":
        if "energy" not in cube.dims or cube.ndim != 3:
            raise ValueError(f"--mode spectra needs a spectrum image with dims (y, x, energy), got {cube.dims}")
        if channels:
            raise ValueError("--channels sums energy bands into image channels for the window modes; --mode spectra "
                             "takes each position's spectrum (--energy picks its range)")
        return cube.transpose("y", "x", "energy")
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


def region_bounds(spec, centres):
    """The rectangle of the scan, ``((r0, r1), (c0, c1))``, that the samples at ``centres`` (an
    ``(N, 2)`` array, rounded here, or a :class:`ScanGrid`) need, and the centres within it."""
    if not isinstance(centres, ScanGrid):
        centres = np.asarray(centres).round().astype(np.int64)
    (r0, r1), (c0, c1) = window_bounds(np.asarray(centres), spec.window or 1)
    return ((r0, r1), (c0, c1)), centres - [r0, c0]


def cube_region(spec, data, centres):
    """The (lazy) part of the cube that the samples at ``centres`` need (:func:`region_bounds`),
    and the centres within it.

    A rectangle of the scan (its frames, in frames mode): plain slices keep Dask's reads whole-chunk.
    """
    ((r0, r1), (c0, c1)), local = region_bounds(spec, centres)
    return data[r0:r1, c0:c1], local


def samples_per_chunk(sample_shape, itemsize):
    """Samples in a ~16 MiB chunk: few, large writes and reads, yet many chunks to shuffle."""
    return int(np.clip(CHUNK_BYTES // (int(np.prod(sample_shape)) * itemsize), 64, 16384))


def sample_blocks(spec, cube, blocks):
    """Lazy samples, one Dask task per block of positions: as cut, in the cube's dtype, when
    :attr:`WindowSpec.keeps_dtype` (a uint16 cube makes a uint16 stack); transformed float32 otherwise.

    Each block is a Dask array op on the cube (not a ``delayed`` call, which would embed a private
    copy of the cube's read tasks per block), so every cube chunk is read once however many blocks
    it feeds.
    """
    make, dtype = (spec.cut, cube.dtype) if spec.keeps_dtype else (spec.raw, np.dtype(np.float32))
    samples = []
    for block in blocks:
        region, local = cube_region(spec, cube.data, block)
        shape = (len(block), cube.sizes.get("channel", 1), *spec.sample_shape(cube.shape[2:]))
        samples.append(da.map_blocks(make, region.rechunk(region.shape), local, meta=np.empty((0,) * 4, dtype),
                                     chunks=tuple((n,) for n in shape),
                                     new_axis=list(range(len(shape) - region.ndim))))
    return da.concatenate(samples)


def sample_centres(blocks):
    """Each sample's centre (row, col), lazily: a grid's blocks make theirs as they are written."""
    return da.concatenate([da.from_delayed(dask.delayed(np.asarray)(block, float), (len(block), 2), dtype=float)
                           for block in blocks])


def extract_patches(cube, *, mode="points", window="auto", stride=None, transform="none", binning=1, channels="",
                    energy="", background="none", pre_edge="", min_distance="auto", polarity="auto", threshold=0.3,
                    points=None, max_samples=20000, selection="random", seed=0):
    """The patch store's Dataset, lazy: ``patches`` holds the samples as cut and transformed; the
    normalisation is left for :func:`write_patches`, which measures it while it writes.

    ``window="auto"`` (points, grid): about 3.7 lattice spacings (:func:`pipeline.lattice.window_for`),
    the spacing read from the image; the choice and its reason go into ``attrs["window_choice"]``.
    ``min_distance="auto"`` (points): 0.6 lattice spacings, one column per cell of the brightest
    sublattice (3 px without a lattice); ``polarity="auto"``: columns are minima where the
    intensities skew low (ABF); what was found goes into ``attrs["columns_choice"]``.
    """
    cube = check_cube(cube, mode, channels)
    if mode != "spectra" and (energy or background != "none" or pre_edge):
        raise ValueError("--energy, --background and --pre-edge apply to --mode spectra")
    signals = mode in ("frames", "spectra")  # a sample per scan position, not a window
    lattice = {} if signals else lattice_attrs(cube)
    window, choice = choose_window(window, mode, lattice, cube.shape[:2])
    if min_distance == "auto":
        spacing = lattice.get("lattice_spacing")
        min_distance = max(3, round(COLUMN_SEPARATION * spacing)) if spacing else 3
    positions, columns = plan_positions(cube, mode=mode, window=window, stride=stride, min_distance=min_distance,
                                        threshold=threshold, polarity=polarity, points=points)
    if signals and transform != "none":
        raise ValueError(f"--transform applies to 'points' and 'grid' windows, not to '{mode}'")
    spectral = {}
    if mode == "spectra":
        from .spectra import spectrum_settings

        spectral = spectrum_settings(cube["energy"].values, energy_range=energy, background=background,
                                     pre_edge=pre_edge, binning=binning)
    spec = WindowSpec(mode=mode, window=0 if signals else window, transform=transform, binning=binning,
                      channels="" if signals else channels, **spectral)
    chunk = samples_per_chunk(spec.sample_shape(cube.shape[2:]), 4)
    samples = positions
    if max_samples is not None and len(positions) > max_samples:
        if selection == "strided":
            chosen = np.linspace(0, len(positions) - 1, max_samples).round().astype(np.int64)
        else:
            chosen = np.random.default_rng(seed).choice(len(positions), max_samples, replace=False)
        samples = positions[chosen].astype(float)
    blocks = (grid_blocks if isinstance(samples, ScanGrid) else point_blocks)(samples, cube.data.chunks,
                                                                            spec.window, chunk)
    raw = sample_blocks(spec, cube, blocks).rechunk((chunk, -1, -1, -1))
    centres = sample_centres(blocks).rechunk((COORD_CHUNK, 2))

    def physical(dim, px):
        return px.map_blocks(to_physical, cube[dim].values, dtype=float)

    if isinstance(positions, ScanGrid):
        encoded, layout = {}, positions.to_attrs()
    else:
        encoded = {f"position_{name}": ("position", positions[:, i],
                                         {"units": "px", "long_name": f"{name} of every position to encode"})
                   for i, name in enumerate(("row", "col"))}
        layout = {}
    channel_coords = {}
    if mode == "spectra":  # each sample channel's energy (a binned channel's mean)
        from .spectra import sample_energies

        channel_coords["energy"] = ("px", sample_energies(cube["energy"].values, spec), dict(cube["energy"].attrs))
    return xr.Dataset(
        {"patches": (("sample", "channel", "py", "px"), raw,
                     {"long_name": "sample as cut and transformed; normalise with (value - offset) / scale"}),
         **encoded},
        coords={"row": ("sample", centres[:, 0], {"units": "px"}),
                "col": ("sample", centres[:, 1], {"units": "px"}),
                "y": ("sample", physical("y", centres[:, 0]), dict(cube["y"].attrs)),
                "x": ("sample", physical("x", centres[:, 1]), dict(cube["x"].attrs)), **channel_coords},
        attrs={"mode": mode, "stride": int(stride or window), **layout,
               "image_shape": list(cube.shape[:2]), "normalisation": "normalised = (value - offset) / scale",
               **lattice, **choice, **columns, **spec.to_attrs()})


def choose_window(window, mode, lattice, shape):
    """``(window in px, attrs recording why)`` for the ``window`` option (a size, or "auto") on an
    image of ``shape``; an automatic window is at most half the image."""
    if mode in ("frames", "spectra"):
        return 0, {}
    if window != "auto":
        return int(window), {}
    if "lattice_spacing" not in lattice:
        raise ValueError(f"--window auto found no lattice in the image ({lattice.get('no_lattice', 'no Bragg ring')}); "
                         f"give the window in pixels, e.g. --window 32")
    from .lattice import CELLS, window_for

    chosen = window_for(lattice["lattice_spacing"], hi=max(4, min(128, min(shape) // 8 * 4)))
    return chosen, {"window_choice": f"auto: {chosen} px, about {CELLS} x the lattice spacing "
                                     f"{lattice['lattice_spacing']:.1f} px ({lattice['lattice_symmetry']}-fold)"}


def lattice_attrs(cube):
    """The lattice's spacing and symmetry estimated from the image (:mod:`pipeline.lattice`), as
    patch store attrs; none where the image shows no lattice."""
    from .lattice import NoLattice, estimate_lattice

    image = cube.data if cube.ndim == 2 else cube.data.sum(axis=-1)
    try:
        found = estimate_lattice(image)
    except NoLattice as err:
        return {"no_lattice": str(err).split(": ", 1)[-1].split("; give")[0]}
    return {"lattice_spacing": round(found["spacing"], 3), "lattice_symmetry": found["symmetry"],
            "lattice_symmetry_scores": {str(n): v for n, v in found["scores"].items()},
            "lattice_orientation_spacing": round(found["orientation_spacing"], 3)}


def store_block(samples, target, block_info=None):
    """Write a block of samples to its rows of the ``target`` store; return its ``[[min, max,
    finite]]`` (integers are always finite: no pass over them to say so)."""
    (start, stop), *_ = block_info[0]["array-location"]
    target[start:stop] = samples
    finite = np.isfinite(samples).all() if samples.dtype.kind == "f" else True
    return np.array([[samples.min(), samples.max(), finite]], dtype=float)


def write_patches(cube_path, out_path, *, variable="data", overwrite=False, reuse=False, check_only=False,
                  progress=True, log=print, **options):
    """``rvae patches``: extract and write the patch store in one pass over the cube; returns the store.

    The store records the cube it was cut from (path and :func:`~pipeline.provenance.store_fingerprint`),
    which the encode stage checks. ``reuse``: an existing store cut from this same cube with these
    same options is kept as it is (``rvae run`` continuing a run). ``check_only``: write nothing;
    return whether ``reuse`` would keep the store at ``out_path``.
    """
    check_distinct([out_path], [cube_path, options.get("points")])
    cube = open_cube(cube_path, variable)
    record = {"source_fingerprint": provenance.store_fingerprint(cube_path, variable), "variable": variable,
              "options": json.dumps(options, sort_keys=True, default=str)}
    if check_only:
        return records_match(out_path, record)
    if reuse and records_match(out_path, record):
        log(f"{out_path}: up to date (cut from this cube with these options), kept")
        return open_store(out_path, what="patch store")
    check_writable(out_path, overwrite)
    with reading(cube_path):
        ds = extract_patches(cube, **options)
    if "window_choice" in ds.attrs:
        log(f"window {ds.attrs['window_choice']}")
    if "columns_choice" in ds.attrs:
        log(f"atom columns: {ds.attrs['columns_choice']}")
    ds.attrs.update(source=str(Path(cube_path).resolve()), source_shape=list(cube.shape), **record)
    coords = [name for name, v in ds.coords.items() if v.chunks]  # each sample's centre, lazily
    with staged_output(out_path, overwrite) as staging:
        ds.to_zarr(staging, zarr_format=3, compute=False,  # metadata and in-memory variables; Dask ones below
                   encoding={"patches": {"compressors": patch_codecs(ds["patches"].dtype)}})

        def target(name):
            # Every chunk is written anyway; zarr's check of whether each one is all fill value
            # costs more than compressing it (315 vs 825 MiB/s per thread for LZ4 frames).
            return zarr.open_array(str(staging / name), mode="r+").with_config({"write_empty_chunks": True})

        # Each task stores its block of samples and returns the block's range: one pass, each block
        # cut once and never read back. (xarray's deferred write optimises its own copy of the graph,
        # which would cut every block a second time; Dask's `return_stored` reloads what it stored.)
        samples = ds["patches"].data
        ranges = samples.map_blocks(store_block, target=target("patches"), dtype=float, drop_axis=[2, 3],
                                    chunks=((1,) * samples.numblocks[0], (3,)))
        centres = da.store([ds[name].data for name in coords], [target(name) for name in coords],
                           lock=False, compute=False)
        with reading(cube_path):
            lo, hi, finite, _ = compute(ranges[:, 0].min(), ranges[:, 1].max(), ranges[:, 2].all(), centres,
                                        progress=progress)
        if not finite:
            raise ValueError(f"cube {str(cube_path)!r} contains NaN or Inf values where samples are cut; "
                             f"clean or mask them before extracting patches")
        # dark columns (ABF) are inverted: on bright-on-dark windows the rVAE's angle is learned, on
        # dark-on-bright ones it collapsed to a constant (docs/bench_accuracy.md)
        spec = WindowSpec.from_attrs(ds.attrs).normalised_by(float(lo), float(hi),
                                                             invert=ds.attrs.get("columns_polarity") == "dark")
        zarr.open_group(str(staging), mode="r+").attrs.update(spec.to_attrs())
        record_chunks(staging)
        zarr.consolidate_metadata(str(staging))
    return xr.open_zarr(out_path)
