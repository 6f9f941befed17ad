"""The results store's layout: which positions form each block, the template written before any
block, and how one block's posterior lands in its chunk-aligned region.

Each block fills whole chunks of every variable and its own entry (its own chunk) of
``progress/block_done``, so any number of writers, ranks or Dask workers, can fill distinct blocks
at once without two ever writing one chunk. That bookkeeping lives in a subgroup, which
``xarray.open_zarr`` does not read: the user's dataset holds the results alone.
"""
import math

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .patches import to_physical
from .windows import ScanGrid


def wrap_angle(angle, symmetry=1):
    """Wrap radians into ``(-pi/n, pi/n]`` for an n-fold symmetric object."""
    half = np.pi / symmetry
    return half - np.mod(half - angle, 2 * half)


class EncodePlan:
    """Which positions form each block and where each block's results go: ``block`` consecutive
    points (points mode), or a tile of the grid of about ``block`` positions (grid and frames
    modes), so a block's memory stays bounded however wide the scan.

    ``align``: positions per cube chunk along rows and columns. Tiles are then no wider than a
    chunk's columns, and blocks run down each column of tiles before the next, so consecutive
    blocks read the same few chunks (:class:`~pipeline.cube_regions.RegionReader` decodes each once).
    """

    def __init__(self, mode, positions, block, align=None):
        self.mode = mode
        self.positions = positions  # a ScanGrid in grid and frames modes, (N, 2) for points
        if self.mode == "points":
            self.shape, self.dims, self.chunks = (len(positions),), ("sample",), (block,)
        else:
            self.shape, self.dims = positions.shape, ("y", "x")
            cols = min(self.shape[1], block, (align or self.shape)[1])
            self.chunks = (max(1, block // cols), cols)
        self.grid = tuple(math.ceil(n / c) for n, c in zip(self.shape, self.chunks))
        self.n_blocks = math.prod(self.grid)

    def block(self, b):
        """The positions of block ``b`` (an ``(N, 2)`` array, or a :class:`ScanGrid` tile) and
        its region in the results' dims; results are in the positions' (row-major) order."""
        index = (b,) if self.mode == "points" else (b % self.grid[0], b // self.grid[0])  # down columns first
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, self.chunks, self.shape))
        if self.mode == "points":
            return self.positions[region[0]], region
        return ScanGrid(self.positions.rows[region[0]], self.positions.cols[region[1]]), region


def results_template(plan, cube, model, symmetry, attrs, reference_symmetry=None, reference_shift=False):
    """The results Dataset, lazily zero-filled, with coordinates and units; with the classical
    reference map's variables where ``reference_symmetry`` (the lattice's n) is known, or the
    classical shift map's (``reference_shift``, spectra)."""
    latent = model.latent_dim
    space = plan.shape

    def empty(*lead, dtype=np.float32):
        return da.full((*lead, *space), np.nan, dtype=dtype, chunks=(*lead, *plan.chunks))

    def physical(dim, px):
        return to_physical(px, cube[dim].values)

    if plan.mode == "points":
        rows, cols = plan.positions[:, 0], plan.positions[:, 1]
        coords = {"y": ("sample", physical("y", rows), dict(cube["y"].attrs)),
                  "x": ("sample", physical("x", cols), dict(cube["x"].attrs)),
                  "row": ("sample", rows, {"units": "px", "long_name": "atom column row in the image"}),
                  "col": ("sample", cols, {"units": "px", "long_name": "atom column column in the image"})}
    else:
        coords = {"y": ("y", physical("y", np.asarray(plan.positions.rows)), dict(cube["y"].attrs)),
                  "x": ("x", physical("x", np.asarray(plan.positions.cols)), dict(cube["x"].attrs))}
    coords["latent"] = ("latent", np.arange(latent), {"units": "1", "long_name": "latent variable index"})
    half = np.pi / symmetry
    data = {
        "z": (("latent", *plan.dims), empty(latent), {"units": "1", "long_name": "latent mean"}),
        "z_std": (("latent", *plan.dims), empty(latent), {"units": "1", "long_name": "latent posterior std"}),
        "recon_error": (plan.dims, empty(), {"units": "1",
                                             "long_name": "mean squared reconstruction error (normalised)"}),
    }
    if model.rotation:
        refined = "refined against the decoder, " if attrs.get("refined") else ""
        frame = ("the decoder's image at the reference code (attrs frame_reference_code)"
                 if "frame_reference_code" in attrs else "the decoder's image at the window's own code")
        name = f"rotation, counter-clockwise, {refined}against {frame}, wrapped to (-pi/{symmetry}, pi/{symmetry}]"
        data["angle"] = (plan.dims, empty(), {"units": "rad", "long_name": name, "valid_range": [-half, half]})
        data["angle_std"] = (plan.dims, empty(), {"units": "rad", "long_name": "rotation posterior std"})
        if plan.mode == "points" and attrs.get("symmetry_spectrum") == 2 * symmetry:
            data["other_sublattice"] = (plan.dims, empty(), {
                "units": "1", "long_name": f"1 where the window is centred on the lattice's other sublattice: it reads "
                                           f"turned by {180 // symmetry} deg from its neighbours, and angle gives it "
                                           f"in their convention (0 elsewhere)"})
        if "frame_reference_code" in attrs:
            data["frame_offset"] = (plan.dims, empty(), {
                "units": "rad", "long_name": "rotation of the decoder's image at the window's code against the "
                                             "reference image, included in angle (one frame for every window)"})
    if reference_symmetry:
        n = reference_symmetry
        data["reference_angle"] = (plan.dims, empty(), {
            "units": "rad", "long_name": f"classical reference: local-FFT orientation of the first Bragg ring, "
                                        f"wrapped to (-pi/{n}, pi/{n}]", "valid_range": [-np.pi / n, np.pi / n],
            "symmetry": n})
        data["reference_confidence"] = (plan.dims, empty(), {
            "units": "1",
            "long_name": "classical reference: strength of the ring's n-fold harmonic (0 none, 1 perfect)"})
        if model.rotation:
            data["reference_difference"] = (plan.dims, empty(), {
                "units": "rad", "symmetry": n,
                "long_name": f"angle - reference_angle after one global offset, wrapped to (-pi/{n}, pi/{n}]: "
                             f"near 0 where the rVAE and the classical map agree"})
    if model.kind == "spectrum" and model.shift:
        frame = ("the decoder's spectrum at the reference code (attrs frame_reference_code)"
                 if "frame_reference_code" in attrs else "the decoder's spectrum at the sample's own code")
        units = cube["energy"].attrs.get("units", "channel widths") if "energy" in cube.coords else "channel widths"
        data["shift"] = (plan.dims, empty(), {
            "units": units, "long_name": f"shift along energy (positive: towards higher energy), "
                                         f"{'refined against the decoder, ' if attrs.get('refined') else ''}against "
                                         f"{frame}",
            "channel_width": attrs.get("energy_per_channel", 1.0)})
        data["shift_std"] = (plan.dims, empty(), {"units": units, "long_name": "shift posterior std"})
        if reference_shift:
            data["reference_shift"] = (plan.dims, empty(), {
                "units": units, "long_name": "classical reference: cross-correlation shift against the aligned mean "
                                             "of the training spectra (positive: towards higher energy)"})
            data["reference_difference"] = (plan.dims, empty(), {
                "units": units, "long_name": "shift - reference_shift after one global offset: near 0 where the "
                                             "shift-VAE and the classical map agree"})
        if "frame_reference_code" in attrs:
            data["frame_offset"] = (plan.dims, empty(), {
                "units": units, "long_name": "shift of the decoder's spectrum at the sample's code against the "
                                             "reference spectrum, included in shift (one frame for every spectrum)"})
    if model.translation:
        for axis in ("y", "x"):
            data[f"shift_{axis}"] = (plan.dims, empty(), {"units": "px", "long_name": f"translation along {axis}"})
    title = (f"shift-VAE shift and latent maps of {attrs.get('source', 'a cube')}" if model.kind == "spectrum" else
             f"rVAE rotation and latent maps of {attrs.get('source', 'a cube')}")
    return xr.Dataset(data, coords=coords, attrs={"Conventions": "CF-1.10", "title": title, **attrs, "complete": False})


def create_progress(group, n_blocks):
    """The per-block record of what is written (a chunk per block, zero until written)."""
    group.require_group("progress").create_array("block_done", shape=(n_blocks,), chunks=(1,), dtype="int8",
                                                  fill_value=0, attributes={"long_name": "1 where a block is written"})


def blocks_done(group):
    """Which blocks of the results ``group`` are written (an int8 array, 1 where written)."""
    return group["progress/block_done"][:]


def mark_done(group, b):
    group["progress/block_done"][b] = 1


def write_block(group, plan, model, region, mean, std, error, offset, symmetry, reference=None):
    """Write one block's posterior (columns ``[angle?, shift?, z...]``) with each window's frame
    ``offset`` (included in the angle or shift), and its classical ``reference`` (results
    variable name to values) if any, into its region."""
    shape = tuple(len(range(*r.indices(n))) for r, n in zip(region, plan.shape))

    def put(name, values):  # values (n,) or (latent, n) in flat position order
        lead = values.shape[:-1]
        group[name][(slice(None),) * len(lead) + region] = values.reshape(*lead, *shape)

    i = 0
    if model.rotation:
        put("angle", wrap_angle(mean[:, 0], symmetry))
        put("angle_std", std[:, 0])
        if "frame_offset" in group:
            put("frame_offset", wrap_angle(offset, symmetry))
        i = 1
    if model.kind == "spectrum" and model.shift:  # already in the energy axis' units
        put("shift", mean[:, 0])
        put("shift_std", std[:, 0])
        if "frame_offset" in group:
            put("frame_offset", offset)
        i = 1
    if model.translation:
        half = np.array(model.image_shape[1:]) / 2  # shift latents are in half-windows
        put("shift_y", mean[:, i] * half[0])
        put("shift_x", mean[:, i + 1] * half[1])
        i += 2
    put("z", mean[:, i:].T)
    put("z_std", std[:, i:].T)
    put("recon_error", error)
    for name, values in (reference or {}).items():
        put(name, values)


def missing_values(ds):
    """``(variable, count)`` of the first of ``angle``, ``z``, ``recon_error`` with values that are
    not finite, or None: a complete store has a value at every position (a lost chunk reads as NaN)."""
    for name in ("angle", "z", "recon_error"):
        if name in ds:
            missing = int((~np.isfinite(ds[name])).sum())
            if missing:
                return name, missing
    return None


def open_results(path):
    """The results store at ``path`` as a lazy ``xarray.Dataset``, after checking that it is
    whole: written to the end (``complete``), every block recorded as written in ``progress/``
    (so an edited ``complete`` is caught), and every chunk counted when it was finished still
    there (:func:`pipeline.stores.open_store`). ``ValueError`` (one line) otherwise."""
    from .stores import open_store

    ds = open_store(path, what="results store")
    try:
        done = blocks_done(zarr.open_group(str(path), mode="r"))
    except (KeyError, FileNotFoundError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a results store (no progress record; rvae encode makes them)") from err
    if "recon_error" not in ds or "complete" not in ds.attrs:
        raise ValueError(f"{str(path)!r} is not a results store (rvae encode makes them)")
    written = int(done.sum())
    if not ds.attrs["complete"]:
        raise ValueError(f"{str(path)!r} is unfinished: {written} of {len(done)} blocks written; run the same rvae "
                         f"encode again to finish it")
    if written < len(done):
        raise ValueError(f"{str(path)!r} says it is complete, but only {written} of {len(done)} blocks are recorded "
                         f"as written (edited or damaged); encode it again")
    if "chunks_written" not in ds.attrs:
        raise ValueError(f"{str(path)!r} does not record its chunks (written by an older rvae, or edited), so a lost "
                         f"chunk could not be told from a value; encode it again")
    return ds


def load_results(path):
    """:func:`open_results`, read into memory, with a value at every position (else ``ValueError``)."""
    from .stores import reading

    ds = open_results(path)
    with reading(path, what="results store"):
        ds = ds.load()
    missing = missing_values(ds)
    if missing:
        raise ValueError(f"results store {str(path)!r}: {missing[1]} values of {missing[0]!r} are missing (NaN) in a "
                         f"store marked complete (a damaged chunk, or a model that diverged); encode it again")
    return ds


def write_reference_difference(path, group):
    """Fill ``reference_difference`` from the written maps (call once every block is written):
    the offset of ``angle`` against ``reference_angle`` (circular) or of ``shift`` against
    ``reference_shift`` over the whole map, a Dask reduction, then each chunk's difference,
    written chunk by chunk."""
    import dask.array as da

    ds = xr.open_zarr(path)
    if "reference_difference" not in ds:
        return
    if "reference_shift" in ds:
        difference = ds["shift"].data - ds["reference_shift"].data
        difference = difference - da.nanmean(difference).compute()
    else:
        n = int(ds["reference_difference"].attrs["symmetry"])
        turn = n * (ds["angle"].data - ds["reference_angle"].data)
        cos, sin = da.compute(da.nanmean(da.cos(turn)), da.nanmean(da.sin(turn)))
        offset = np.arctan2(sin, cos)
        difference = da.angle(da.exp(1j * (turn - offset))) / n
    da.store(difference.astype(np.float32), group["reference_difference"], lock=False)


def write_sublattice_convention(group, neighbours=6):
    """Give every atom column's angle in its neighbours' sublattice convention (call once every
    block is written; points results whose lattice reads ``2 n``-fold in its power spectrum and
    ``n``-fold in real space, where a window centred on the other sublattice sees the lattice
    turned by ``180 / n`` degrees): a window that most of its ``neighbours`` nearest read turned
    by about half a period is turned back, and marked in ``other_sublattice``. Idempotent: a
    window turned back agrees with its neighbours."""
    from scipy.spatial import cKDTree

    if "other_sublattice" not in group:
        return
    n = int(group.attrs["symmetry"])
    angle = group["angle"][:]
    positions = np.stack([group["row"][:], group["col"][:]], -1)
    marked = np.nan_to_num(group["other_sublattice"][:]).astype(np.float32)  # those turned back before
    if len(angle) > neighbours:
        _, near = cKDTree(positions).query(positions, k=neighbours + 1)
        turned = np.abs(wrap_angle(angle[near[:, 1:]] - angle[:, None], n)) > np.pi / (2 * n)
        odd = turned.sum(axis=1) > neighbours // 2
        angle = np.where(odd, wrap_angle(angle + np.pi / n, n), angle)
        marked[odd] = 1
    group["angle"][:] = angle.astype(np.float32)
    group["other_sublattice"][:] = marked
