"""The encode stage: stream the cube through the trained encoder into ``results.zarr``.

Every position recorded in the patch store (each atom column, each grid window, each scan
position) is encoded, a block of positions at a time: a block reads only the cube region its
windows cover. The results' layout is written first (a template); each finished block then
fills its own chunk-aligned region and ticks its entry in ``block_done``, so an interrupted run
resumes where it stopped. ``attrs["complete"] = True`` is written last.
"""
import math
from pathlib import Path

import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr

from models import load_checkpoint

from . import provenance
from .patches import check_cube, cube_region, positions_to_encode, to_physical
from .stores import check_distinct, open_cube, open_store, output_lock, reading, record_chunks, staged_output, writing
from .windows import WindowSpec


def wrap_angle(angle, symmetry=1):
    """Wrap radians into ``(-pi/n, pi/n]`` for an n-fold symmetric object."""
    half = np.pi / symmetry
    return half - np.mod(half - angle, 2 * half)


class EncodePlan:
    """Which positions form each block and where each block's results go."""

    def __init__(self, mode, positions, block):
        self.mode = mode
        self.positions = positions  # a ScanGrid in grid and frames modes, (N, 2) for points
        if self.mode == "points":
            self.shape, self.dims = (len(positions),), ("sample",)
            self.step = block
        else:
            self.shape, self.dims = positions.shape, ("y", "x")
            self.step = max(1, block // self.shape[1]) * self.shape[1]  # whole rows of the grid
        self.chunks = (self.step,) if self.mode == "points" else (self.step // self.shape[1], self.shape[1])
        self.n_blocks = math.ceil(len(positions) / self.step)

    def block(self, b):
        """Flat position indices of block ``b`` and its region in the results' dims."""
        start, stop = b * self.step, min((b + 1) * self.step, len(self.positions))
        if self.mode == "points":
            region = (slice(start, stop),)
        else:
            region = (slice(start // self.shape[1], stop // self.shape[1]), slice(None))
        return slice(start, stop), region


def results_template(plan, cube, model, symmetry, attrs):
    """The results Dataset, lazily zero-filled, with coordinates and units."""
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
                  "row": ("sample", rows, {"units": "px"}), "col": ("sample", cols, {"units": "px"})}
    else:
        coords = {"y": ("y", physical("y", np.asarray(plan.positions.rows)), dict(cube["y"].attrs)),
                  "x": ("x", physical("x", np.asarray(plan.positions.cols)), dict(cube["x"].attrs))}
    coords["latent"] = ("latent", np.arange(latent))
    half = np.pi / symmetry
    data = {
        "z": (("latent", *plan.dims), empty(latent), {"units": "1", "long_name": "latent mean"}),
        "z_std": (("latent", *plan.dims), empty(latent), {"units": "1", "long_name": "latent posterior std"}),
        "recon_error": (plan.dims, empty(), {"units": "1", "long_name": "mean squared reconstruction error (normalised)"}),
        "block_done": (("block",), da.zeros(plan.n_blocks, dtype=np.int8, chunks=1), {"long_name": "1 where a block is written"}),
    }
    if model.rotation:
        data["angle"] = (plan.dims, empty(), {"units": "rad", "long_name": f"rotation, counter-clockwise, wrapped to (-pi/{symmetry}, pi/{symmetry}]",
                                               "valid_range": [-half, half]})
        data["angle_std"] = (plan.dims, empty(), {"units": "rad", "long_name": "rotation posterior std"})
    if model.translation:
        for axis in ("y", "x"):
            data[f"shift_{axis}"] = (plan.dims, empty(), {"units": "px", "long_name": f"translation along {axis}"})
    return xr.Dataset(data, coords=coords, attrs={**attrs, "complete": False})


def encode_block(model, spec, cube, positions, batch_size):
    """Encode one block: ``(mean, std, recon_error)`` as NumPy arrays."""
    region, local = cube_region(spec, cube.data, positions)
    samples = spec.samples(region.compute(), local)
    if not np.isfinite(samples).all():
        raise ValueError(f"non-finite values in the cube near row {positions[0, 0]:.0f}, col {positions[0, 1]:.0f}")
    means, stds, errors = [], [], []
    for i in range(0, len(samples), batch_size):
        x = torch.from_numpy(samples[i:i + batch_size])
        mean, std = model.encode(x)
        recon = model.decode(mean)
        means.append(mean.numpy()), stds.append(std.numpy())
        errors.append(((recon - x) ** 2).mean(dim=(1, 2, 3)).numpy())
    return np.concatenate(means), np.concatenate(stds), np.concatenate(errors)


def encode(cube_path, patches_path, checkpoint_path, out_path, *, batch_size=1024, block=4096,
           symmetry=1, overwrite=False, reuse=False, config_text=None, variable=None, log=print):
    """``rvae encode``: write ``results.zarr``; resumes an unfinished run of the same inputs.

    Provenance is checked before anything is written: the patch store must have been cut from
    this cube (its recorded fingerprint), the checkpoint trained on samples made like the patch
    store's, and an unfinished store must be of this same run. ``reuse``: complete results of
    this same run are kept as they are (``rvae run`` continuing a run).
    """
    check_distinct([out_path], [cube_path, patches_path, checkpoint_path])
    model, payload = load_checkpoint(checkpoint_path)
    model.eval()
    patch_store = open_store(patches_path, what="patch store")
    attrs = dict(patch_store.attrs)
    if "patches" not in patch_store or "mode" not in attrs:
        raise ValueError(f"{str(patches_path)!r} is not a patch store (no 'patches' variable); make one with rvae patches")
    spec = WindowSpec.from_attrs(attrs)
    variable = variable or attrs.get("variable", "data")
    cube = check_cube(open_cube(cube_path, variable), attrs["mode"], spec.channels)
    source_fingerprint = provenance.store_fingerprint(cube_path, variable)
    check_patch_source(attrs, patches_path, cube_path, source_fingerprint)
    if tuple(model.image_shape[1:]) != spec.sample_shape(cube.shape[2:]):
        raise ValueError(f"checkpoint expects {model.image_shape[1:]} samples, the patch store makes "
                         f"{spec.sample_shape(cube.shape[2:])}: train on this patch store first")
    trained_on = WindowSpec.from_attrs(payload.get("patch_attrs", {})) if payload.get("patch_attrs") else spec
    if trained_on != spec:
        raise ValueError(f"checkpoint {str(checkpoint_path)!r} was trained on samples made otherwise ({trained_on}) "
                         f"than patch store {str(patches_path)!r} makes them ({spec}); train on this patch store")
    positions = positions_to_encode(patch_store)
    plan = EncodePlan(attrs["mode"], positions, block)
    run_record = {  # what makes two encodes the same run: checked before resuming or reusing
        "source_fingerprint": source_fingerprint, "variable": variable,
        "patches_fingerprint": provenance.store_fingerprint(patches_path, "patches"),
        "checkpoint_sha256": provenance.file_sha256(checkpoint_path), "symmetry": symmetry, "block": block}
    provenance_attrs = {
        "source": str(Path(cube_path).resolve()), "source_mtime": provenance.modification_time(cube_path),
        "patches": str(Path(patches_path).resolve()), "checkpoint": str(Path(checkpoint_path).resolve()),
        "mode": plan.mode, "config": config_text or "", "software_version": provenance.software_version(),
        "git_commit": provenance.git_commit(), "created": provenance.now(), **run_record}
    with output_lock(out_path):
        group = _open_or_create(out_path, plan, cube, model, symmetry, provenance_attrs, run_record, overwrite, reuse)
        if group is None:
            log(f"{out_path}: up to date (complete results of this same run), kept")
            return xr.open_zarr(out_path)
        done = group["block_done"][:]
        todo = [b for b in range(plan.n_blocks) if not done[b]]
        if len(todo) < plan.n_blocks:
            log(f"resuming: {plan.n_blocks - len(todo)} of {plan.n_blocks} blocks already written")
        with writing(out_path):
            for count, b in enumerate(todo, 1):
                flat, region = plan.block(b)
                with reading(cube_path):
                    mean, std, error = encode_block(model, spec, cube, positions[flat], batch_size)
                _write_block(group, plan, model, region, mean, std, error, symmetry)
                group["block_done"][b] = 1
                if count == len(todo) or count % max(1, len(todo) // 10) == 0:
                    log(f"encoded block {count}/{len(todo)} ({flat.stop} of {len(positions)} positions)")
            record_chunks(out_path)
            group.attrs["complete"] = True  # last: a store without it is unfinished
            zarr.consolidate_metadata(str(out_path))
    return xr.open_zarr(out_path)


def check_patch_source(attrs, patches_path, cube_path, fingerprint):
    """Raise ``ValueError`` unless the patch store (its ``attrs``) was cut from this cube."""
    recorded = attrs.get("source_fingerprint")
    if recorded is None:
        raise ValueError(f"patch store {str(patches_path)!r} does not record which cube it was cut from (made by an "
                         f"older rvae); cut it again with rvae patches")
    if recorded != fingerprint:
        raise ValueError(f"patch store {str(patches_path)!r} was cut from {attrs.get('source')!r}, not from this cube "
                         f"{str(cube_path)!r} (their contents differ); encode the cube the patches came from, or cut "
                         f"patches from this one")


def _open_or_create(out_path, plan, cube, model, symmetry, attrs, run_record, overwrite, reuse):
    """The results group to fill (a new one, or an unfinished one of this same run), or None when
    ``reuse`` finds complete results of this run. Called with the output lock held."""
    out = Path(out_path)
    if out.exists() and not overwrite:
        try:
            existing = dict(zarr.open_group(str(out), mode="r").attrs)
        except Exception as err:  # not a Zarr store at all
            raise FileExistsError(f"{str(out)!r} exists and is not a results store; choose another output or "
                                  f"pass --overwrite") from err
        if "complete" not in existing:
            raise FileExistsError(f"{str(out)!r} exists and is not a results store; choose another output or "
                                  f"pass --overwrite")
        differ = [key for key, value in run_record.items() if existing.get(key) != value]
        if existing["complete"]:
            if reuse and not differ:
                return None
            raise FileExistsError(f"{str(out)!r} already holds complete results; choose another output or pass "
                                  f"--overwrite")
        if differ:
            raise FileExistsError(f"{str(out)!r} holds unfinished results of a different run (its {', '.join(differ)} "
                                  f"differ{'s' if len(differ) == 1 else ''}); resume with the same inputs and options, "
                                  f"or pass --overwrite to start afresh")
        return zarr.open_group(str(out), mode="r+")
    # The template is written beside the output and renamed into place: a store at ``out`` is
    # always a whole template (or more), whenever the process is killed.
    with staged_output(out, overwrite=True, locked=True) as staging:
        template = results_template(plan, cube, model, symmetry, attrs)
        template.to_zarr(staging, compute=False, zarr_format=3)
        group = zarr.open_group(str(staging), mode="r+")
        for name in template.coords:  # coordinates are in memory: write them now, not with the blocks
            group[name][:] = template[name].values
    return zarr.open_group(str(out), mode="r+")


def _write_block(group, plan, model, region, mean, std, error, symmetry):
    """Write one block's posterior (columns ``[angle?, shift?, z...]``) into its region."""
    shape = tuple(len(range(*r.indices(n))) for r, n in zip(region, plan.shape))

    def put(name, values):  # values (n,) or (latent, n) in flat position order
        lead = values.shape[:-1]
        group[name][(slice(None),) * len(lead) + region] = values.reshape(*lead, *shape)

    i = 0
    if model.rotation:
        put("angle", wrap_angle(mean[:, 0], symmetry))
        put("angle_std", std[:, 0])
        i = 1
    if model.translation:
        half = np.array(model.image_shape[1:]) / 2  # shift latents are in half-windows
        put("shift_y", mean[:, i] * half[0])
        put("shift_x", mean[:, i + 1] * half[1])
        i += 2
    put("z", mean[:, i:].T)
    put("z_std", std[:, i:].T)
    put("recon_error", error)
