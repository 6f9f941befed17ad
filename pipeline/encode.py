"""The encode stage: stream the cube through the trained encoder into ``results.zarr``.

Every position recorded in the patch store (each atom column, each grid window, each scan
position) is encoded, a block of positions at a time: a block reads only the cube region its
windows cover. The results' layout is written first (a template, :mod:`pipeline.results`); each
finished block then fills its own chunk-aligned region and ticks its own entry of
``progress/block_done``,
so an interrupted run resumes where it stopped. ``attrs["complete"] = True`` is written last.

Who encodes the blocks:

* one process, or N ranks of an ``srun``/``mpirun``/``torchrun`` launch (:func:`encode`):
  each rank takes a contiguous run of the blocks still to do (neighbouring blocks share cube
  chunks); each rank reads the next block's region and
  cuts its windows in a background thread while its model encodes the current one (on the
  rank's GPU where there is one), and writes its own blocks; rank 0 checks and creates the
  store, and marks it complete once every rank has finished. SIGTERM or SIGUSR1 stops a rank
  after its current block (exit 75 from the CLI); a re-run does the blocks still to do;
* the workers of a Dask cluster (``--dask mpi`` or ``slurm``, :func:`encode_with_dask`): every
  block is a task, the model is sent to each worker once.
"""
import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from models import load_checkpoint
from models.geometry import upright
from models.refinement import AngleSearch
from models.shift_search import ShiftSearch

from . import provenance
from .compression import results_codecs
from .config import check_encode_on_dask
from .cube_regions import RegionReader
from .distributed import ClusterEnvironment, make_strategy, precision_context
from .lattice import orientation
from .patches import check_cube, positions_to_encode, region_bounds
from .preemption import Preempted, PreemptionFlag
from .results import (
    EncodePlan,
    blocks_done,
    create_progress,
    mark_done,
    results_template,
    wrap_angle,
    write_block,
    write_reference_difference,
    write_sublattice_convention,
)
from .stores import check_distinct, count_chunks, open_cube, open_store, output_lock, reading, staged_output, writing
from .windows import ScanGrid, WindowSpec


def cut_block(spec, reader, positions):
    """The normalised samples of one block, read (by a :class:`RegionReader`) from the cube
    region its windows cover."""
    (rows, cols), local = region_bounds(spec, positions)
    samples = spec.samples(reader.read(rows, cols), local)
    if not np.isfinite(samples).all():
        row, col = np.asarray(positions)[0]
        raise ValueError(f"non-finite values in the cube near row {row:.0f}, col {col:.0f}")
    return samples


def encode_samples(model, samples, batch_size, device=torch.device("cpu"), precision="fp32", search=None, symmetry=1):
    """``(mean, std, recon_error, frame_offset)`` of every sample as NumPy arrays, ``batch_size`` at a time.

    ``search``: an :class:`~models.refinement.AngleSearch` to refine each angle against the
    decoder over one period of the ``symmetry`` and put it in the search's one frame (its
    ``frame_offset`` added); None keeps the encoder's angles (offsets 0). The reconstruction, and
    its error over the model's support, is of the window's own code at the refined angle."""
    samples = torch.from_numpy(samples)
    means, stds, errors, offsets = [], [], [], []
    with torch.inference_mode(), precision_context(device, precision):
        for i in range(0, len(samples), batch_size):
            x = samples[i:i + batch_size]
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
            mean, std = model.encode(x)
            offset = torch.zeros(len(x), device=x.device)
            parts = model._split(mean, mean)
            rendering = model.renderer(parts["z"][0])  # decoded once, for the search and the reconstruction
            if search is not None and model.rotation:
                angle, offset = search.refine(x, mean, symmetry, rendering=rendering)
                mean[:, 0] = angle - offset  # in the code's own frame, for its reconstruction
            parts = model._split(mean, mean)
            recon = model.mean_image(rendering(parts["angle"][0] if model.rotation else None,
                                               parts["shift"][0] if model.translation else None))
            mean[:, 0] += offset  # in the one frame
            if search is not None and model.rotation:
                # The content seen upright: the code of the window turned back into the one frame,
                # so z says what a window holds, not how it is turned (identical grains get one z).
                shift = model._split(mean, mean)["shift"][0] if model.translation else None
                again, spread = model.encode(upright(x, mean[:, 0], shift))
                content = slice(model.encoded_dim - model.latent_dim, model.encoded_dim)
                mean[:, content], std[:, content] = again[:, content], spread[:, content]
            means.append(mean.float()), stds.append(std.float()), offsets.append(offset.float())
            support = model.support.expand_as(x)  # the disc a disc model was trained on, else every pixel
            errors.append((((recon.float() - x) ** 2) * support).sum(dim=(1, 2, 3)) / support.sum(dim=(1, 2, 3)))
    return tuple(torch.cat(parts).cpu().numpy() for parts in (means, stds, errors, offsets))


def encode_spectra(model, samples, batch_size, energy_per_channel, device=torch.device("cpu"), precision="fp32",
                   search=None):
    """``(mean, std, recon_error, frame_offset)`` of every spectrum (a :class:`models.SpectrumVAE`'s
    posterior, ``batch_size`` at a time), shifts and offsets in the energy axis' units
    (``energy_per_channel`` a sample channel). ``search``: a :class:`~models.shift_search.ShiftSearch`
    to refine each shift against the decoder, in its one frame; None keeps the encoder's shifts.
    The reconstruction is of the sample's own code at its shift."""
    samples = torch.from_numpy(samples)
    means, stds, errors, offsets = [], [], [], []
    with torch.inference_mode(), precision_context(device, precision):
        for i in range(0, len(samples), batch_size):
            x = samples[i:i + batch_size].to(device, non_blocking=True)
            mean, std = model.encode(x)
            parts = model._split(mean, mean)
            rendering = model.renderer(parts["z"][0])  # decoded once, for the search and the reconstruction
            shift = parts["shift"][0] if model.shift else None
            offset = torch.zeros(len(x), device=x.device)
            if search is not None:
                shift, offset = search.refine(x, mean, rendering)
                mean[:, 0] = shift
            recon = model.mean_image(rendering(None if shift is None else shift - offset))  # its own frame
            errors.append(((recon.float() - x) ** 2).mean(dim=(1, 2, 3)))
            if model.shift:  # half-spectra to the energy axis' units
                mean[:, 0] = model.shift_in_channels(mean[:, 0]) * energy_per_channel
                std[:, 0] = model.shift_in_channels(std[:, 0]) * abs(energy_per_channel)
            means.append(mean.float()), stds.append(std.float())
            offsets.append(model.shift_in_channels(offset).float() * energy_per_channel)
    return tuple(torch.cat(parts).cpu().numpy() for parts in (means, stds, errors, offsets))


FLIPS = 0.1  # neighbouring windows turned by half the real-space period against each other, at most


def auto_symmetry(attrs, search, sample=None):
    """``(n, attrs recording why)`` for ``symmetry: auto``: the lattice's n-fold symmetry as the patch
    stage read it from the power spectrum or, for windows centred on atom columns with a reference
    image (``search``), that image's rotational symmetry in real space where it divides the
    spectrum's: a power spectrum is centrosymmetric, so a 3-fold lattice reads 6-fold there (and a
    pseudo-hexagonal ring, Si or Cu seen along [110], reads 6-fold while the lattice is 2-fold).

    Where windows centre on either of two equivalent sites (graphene's two sublattices, either atom
    of a dumbbell), neighbouring windows (``sample``: ``(windows, encoded, positions)``) read turned
    by half that period against each other: the period common to all of them is half as long."""
    spectrum = int(attrs.get("lattice_symmetry", 1))
    chosen = {"symmetry_spectrum": spectrum}
    if search is None or attrs.get("mode") != "points" or spectrum == 1:
        return spectrum, {**chosen, "symmetry_choice": f"{spectrum}-fold, the power spectrum's"}
    real = search.symmetry()
    chosen["symmetry_real_space"] = real
    if spectrum % real:
        return spectrum, {**chosen, "symmetry_choice": f"{spectrum}-fold, the power spectrum's (the reference image "
                                                       f"reads {real}-fold in real space)"}
    flips = neighbour_flips(search, sample, real) if sample is not None else 0.0
    if flips > FLIPS and spectrum % (2 * real) == 0:
        return 2 * real, {**chosen, "symmetry_choice": f"{2 * real}-fold: the reference image reads {real}-fold in "
                                                       f"real space, but {flips:.0%} of neighbouring windows read "
                                                       f"turned by {180 // real} degrees against each other (windows "
                                                       f"centred on equivalent sites; power spectrum {spectrum}-fold)"}
    if real == 1:  # no symmetry seen in real space, and none between neighbours: the spectrum's
        return spectrum, {**chosen, "symmetry_choice": f"{spectrum}-fold, the power spectrum's (the reference image "
                                                       f"reads 1-fold in real space)"}
    return real, {**chosen, "symmetry_choice": f"{real}-fold, the decoder's reference image's in real space "
                                               f"(power spectrum {spectrum}-fold)"}


def neighbour_flips(search, sample, symmetry):
    """The fraction of windows whose refined angle differs from their nearest neighbour's by more
    than a quarter of the period ``2 pi / symmetry``: turned by half a period against each other."""
    from scipy.spatial import cKDTree

    windows, encoded, positions = sample
    if len(positions) < 3:
        return 0.0
    angle = search.refine(windows, encoded, symmetry)[0].numpy()
    _, nearest = cKDTree(positions).query(positions, k=2)
    difference = wrap_angle(angle - angle[nearest[:, 1]], symmetry)
    return float(np.mean(np.abs(difference) > np.pi / (2 * symmetry)))


def training_sample(patch_store, spec, count=2048):
    """``(samples, positions)``: up to ``count`` normalised training samples spread evenly over the
    patch store, and their ``(row, col)``."""
    n = patch_store.sizes["sample"]
    picked = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))
    positions = np.stack([patch_store["row"].values[picked], patch_store["col"].values[picked]], -1)
    return spec.normalise(patch_store["patches"].isel(sample=picked).values), positions


def frame_reference(model, samples, positions):
    """``(code, sample)``: the code whose decoded image defines angle 0, the median of the encoder's
    codes of the training ``samples`` (:func:`training_sample`), and that sample ``(windows,
    encoded, positions)``."""
    windows = torch.from_numpy(samples)
    with torch.inference_mode():
        mean, _ = model.encode(windows)
    return model._split(mean, mean)["z"][0].median(dim=0).values.tolist(), (windows, mean, positions)


class EncodeJob:
    """Everything an encode needs, checked: the model, the sample spec, the cube, the plan, and
    the record that makes two encodes the same run. Built the same way on every rank."""

    def __init__(self, cube_path, patches_path, checkpoint_path, out_path, *, block, symmetry, refine=True,
                 frame="reference", variable=None, config_text=None):
        check_distinct([out_path], [cube_path, patches_path, checkpoint_path])
        self.model, payload = load_checkpoint(checkpoint_path)
        self.model.eval()
        patch_store = open_store(patches_path, what="patch store")
        attrs = dict(patch_store.attrs)
        if "patches" not in patch_store or "mode" not in attrs:
            raise ValueError(f"{str(patches_path)!r} is not a patch store (no 'patches' variable); "
                             f"make one with rvae patches")
        self.spec = spec = WindowSpec.from_attrs(attrs)
        variable = variable or attrs.get("variable", "data")
        self.cube = check_cube(open_cube(cube_path, variable), attrs["mode"], spec.channels)
        source_fingerprint = provenance.store_fingerprint(cube_path, variable)
        check_patch_source(attrs, patches_path, cube_path, source_fingerprint)
        if tuple(self.model.image_shape[1:]) != spec.sample_shape(self.cube.shape[2:]):
            raise ValueError(f"checkpoint expects {self.model.image_shape[1:]} samples, the patch store makes "
                             f"{spec.sample_shape(self.cube.shape[2:])}: train on this patch store first")
        trained_on = WindowSpec.from_attrs(payload["patch_attrs"]) if payload.get("patch_attrs") else spec
        if trained_on != spec:
            raise ValueError(f"checkpoint {str(checkpoint_path)!r} was trained on samples made otherwise "
                             f"({trained_on}) than patch store {str(patches_path)!r} makes them ({spec}); "
                             f"train on this patch store")
        positions = positions_to_encode(patch_store)
        training = functools.cache(lambda: training_sample(patch_store, spec))  # read once, if at all
        self.energy_per_channel = None
        self.spectral_shift = self.model.kind == "spectrum" and self.model.shift
        self.reference_spectrum = None  # the classical estimate's reference, for spectra
        if self.model.kind == "spectrum":
            from .spectra import channel_width, classical_shifts

            self.energy_per_channel = channel_width(self.cube["energy"].values, spec)
            if self.spectral_shift:
                self.reference_spectrum = classical_shifts(training()[0][:, 0, 0])[1]
        # the classical reference map, computed from the same windows (where the lattice is known)
        # (read on the strongest Bragg ring; stores written before it was recorded, on the lattice's period)
        self.lattice = ((attrs.get("lattice_orientation_spacing", attrs["lattice_spacing"]), attrs["lattice_symmetry"])
                        if "lattice_spacing" in attrs and attrs["lattice_symmetry"] > 1 else None)
        align = None
        if isinstance(positions, ScanGrid):  # positions per cube chunk, along rows and columns
            align = tuple(max(1, chunks[0] // step) for chunks, step in
                          zip(self.cube.data.chunks[:2], (positions.rows.step, positions.cols.step)))
        self.plan = EncodePlan(attrs["mode"], positions, block, align)
        self.reader = RegionReader(self.cube.data)
        self.refine = refine = bool(refine and (self.model.rotation or self.spectral_shift))
        # One frame: every window's angle against the decoder's image at one reference code
        # (models.refinement); class-conditional decoders draw a different image per class.
        self.reference, sample = (frame_reference(self.model, *training())
                                  if refine and frame == "reference" and not self.model.num_classes else (None, None))
        self.searches = {}  # an AngleSearch per device
        chosen = {}
        if symmetry == "auto":
            symmetry, chosen = auto_symmetry(attrs, self.search(torch.device("cpu")) if self.reference else None,
                                             sample)
        self.cube_path, self.out_path, self.symmetry = cube_path, out_path, int(symmetry)
        self.run_record = {  # what makes two encodes the same run: checked before resuming or reusing
            "source_fingerprint": source_fingerprint, "variable": variable,
            "patches_fingerprint": provenance.store_fingerprint(patches_path, "patches"),
            "checkpoint_sha256": provenance.file_sha256(checkpoint_path), "symmetry": self.symmetry, "block": block,
            "refined": refine, "frame": frame if refine else "encoder"}
        self.attrs = {
            "source": str(Path(cube_path).resolve()), "source_mtime": provenance.modification_time(cube_path),
            "patches": str(Path(patches_path).resolve()), "checkpoint": str(Path(checkpoint_path).resolve()),
            "mode": self.plan.mode, "config": config_text or "", "software_version": provenance.software_version(),
            "git_commit": provenance.git_commit(), "created": provenance.now(), **self.run_record, **chosen}
        if self.energy_per_channel is not None:
            self.attrs["energy_per_channel"] = self.energy_per_channel
        if self.reference is not None:
            self.attrs["frame_reference_code"] = [round(v, 6) for v in self.reference]

    def search(self, device):
        """The :class:`~models.refinement.AngleSearch` of this model on ``device`` (None: no refinement)."""
        if not self.refine:
            return None
        if device not in self.searches:
            search = ShiftSearch if self.spectral_shift else AngleSearch
            self.searches[device] = search(self.model, self.reference, device=device)
        return self.searches[device]

    def done(self):
        """Whether complete results of this same run are already at the output (what ``reuse`` keeps)."""
        try:
            existing = dict(zarr.open_group(str(self.out_path), mode="r").attrs)
        except Exception:  # nothing there, or not a store
            return False
        return existing.get("complete") is True and all(existing.get(k) == v for k, v in self.run_record.items())

    def open(self, overwrite, reuse):
        """The results group to fill, or None (``reuse`` found complete results of this run).
        Call with the output's lock held."""
        return _open_or_create(self, overwrite, reuse)

    def encode(self, samples, batch_size, device=torch.device("cpu"), precision="fp32"):
        """The posterior ``(mean, std, recon_error, frame_offset)`` of one block's samples."""
        if self.energy_per_channel is not None:
            return encode_spectra(self.model, samples, batch_size, self.energy_per_channel, device, precision,
                                  self.search(device))
        return encode_samples(self.model, samples, batch_size, device, precision, self.search(device), self.symmetry)

    def cut(self, b):
        """Block ``b``'s samples, its region in the results, and its classical reference (the
        results' variables it fills: ``reference_angle`` and ``reference_confidence`` where the
        lattice is known, ``reference_shift`` for spectra; empty otherwise)."""
        positions, region = self.plan.block(b)
        with reading(self.cube_path):
            samples = cut_block(self.spec, self.reader, positions)
        reference = {}
        if self.lattice is not None:
            spacing, symmetry = self.lattice
            angle, confidence = orientation(samples.sum(axis=1), spacing, symmetry,
                                            spectrum=self.spec.transform == "logfft")
            reference = {"reference_angle": angle, "reference_confidence": confidence}
        if self.reference_spectrum is not None:
            from .spectra import cross_correlation_shift

            shift = cross_correlation_shift(samples[:, 0, 0], self.reference_spectrum) * self.energy_per_channel
            reference = {"reference_shift": shift.astype(np.float32)}
        return samples, region, reference

    def write(self, group, region, posterior, b, reference=None):
        """One block's results into its region, then its entry of ``progress/block_done``."""
        with writing(self.out_path):
            write_block(group, self.plan, self.model, region, *posterior, self.symmetry, reference)
            mark_done(group, b)

    def finish(self, group, world_size):
        """Mark the store complete: after every block is written, by one writer."""
        with writing(self.out_path):
            write_sublattice_convention(group)
            write_reference_difference(self.out_path, group)
            # through this one handle: attributes written through another would be overwritten by
            # this handle's older copy at its next write (zarr keeps a group's attributes whole)
            group.attrs.update({"chunks_written": count_chunks(self.out_path), "world_size": world_size})
            group.attrs["complete"] = True  # last: a store without it is unfinished
            zarr.consolidate_metadata(str(self.out_path))


def encode(cube_path, patches_path, checkpoint_path, out_path, *, batch_size=1024, block=4096, symmetry="auto",
           refine=True, frame="reference", precision="fp32", threads=None, timeout=300, overwrite=False, reuse=False,
           config_text=None, variable=None, environment=None, log=print):
    """``rvae encode``: write ``results.zarr``; resumes an unfinished run of the same inputs.

    Provenance is checked before anything is written: the patch store must have been cut from
    this cube (its recorded fingerprint), the checkpoint trained on samples made like the patch
    store's, and an unfinished store must be of this same run. ``reuse``: complete results of
    this same run are kept as they are (``rvae run`` continuing a run).

    Launched as N ranks (``environment``: detected from the launcher), the ranks share the
    blocks; the store equals the one a single process writes.
    """
    environment = environment or ClusterEnvironment.detect()
    strategy = make_strategy("ddp" if environment.world_size > 1 else "none", timeout=timeout,
                             environment=environment)
    strategy.setup()
    if threads:
        torch.set_num_threads(threads)
    try:
        job = EncodeJob(cube_path, patches_path, checkpoint_path, out_path, block=block, symmetry=symmetry,
                        refine=refine, frame=frame, variable=variable, config_text=config_text)
        return _encode_on_ranks(strategy, job, batch_size=batch_size, precision=precision, overwrite=overwrite,
                                reuse=reuse, log=log if strategy.is_main else (lambda line: None))
    finally:
        strategy.shutdown()


def _encode_on_ranks(strategy, job, *, batch_size, precision, overwrite, reuse, log):
    """Every rank's share of ``job``'s unfinished blocks: rank 0 opens or creates the store, each
    rank reads, encodes and writes its blocks (one ahead, one behind), rank 0 marks it complete."""
    out_path = job.out_path
    device = strategy.device
    job.model.to(device)
    with contextlib.ExitStack() as stack:
        group, failure = None, None
        if strategy.is_main:  # rank 0 alone checks, creates or reopens the store, under its lock
            try:
                stack.enter_context(output_lock(out_path))
                group = job.open(overwrite, reuse)
            except (OSError, ValueError) as err:
                failure = err
        failed, kept = strategy.allgather((None if failure is None else str(failure), group is None))[0]
        if failure is not None:
            raise failure
        if failed is not None:
            raise ValueError(f"rank 0 stopped: {failed}")
        if kept:  # complete results of this same run
            log(f"{out_path}: up to date (complete results of this same run), kept")
            return xr.open_zarr(out_path)
        group = group or zarr.open_group(str(out_path), mode="r+")
        todo = np.flatnonzero(blocks_done(group) == 0)
        mine = np.array_split(todo, strategy.world_size)[strategy.rank]  # a run of neighbouring blocks each
        if len(todo) < job.plan.n_blocks:
            log(f"resuming: {job.plan.n_blocks - len(todo)} of {job.plan.n_blocks} blocks already written")
        ranks = f" on each of {strategy.world_size} ranks" if strategy.world_size > 1 else ""
        log(f"encoding on {strategy.describe()}")
        # While the model encodes a block, one thread reads and cuts the next and another writes
        # the last one's results: one block ahead and one behind at most.
        def written(count):  # progress counts blocks whose results are on disk
            if count == len(mine) or count % max(1, len(mine) // 10) == 0:
                log(f"encoded block {count}/{len(mine)}{ranks} ({len(todo)} to do, {job.plan.n_blocks} in all)")

        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, PreemptionFlag() as preemption:
            ahead = reader.submit(job.cut, mine[0]) if len(mine) else None
            behind = None
            for count, b in enumerate(mine, 1):
                if preemption.received:  # the blocks written so far are kept; a re-run does the rest
                    if behind is not None:
                        behind.result()
                    raise Preempted(f"stopped by {preemption.received} after {count - 1} of this rank's "
                                    f"{len(mine)} blocks; run the same command again to finish")
                samples, region, reference = ahead.result()
                ahead = reader.submit(job.cut, mine[count]) if count < len(mine) else None
                posterior = job.encode(samples, batch_size, device, precision)
                if behind is not None:
                    behind.result()
                    written(count - 1)
                behind = writer.submit(job.write, group, region, posterior, b, reference)
            if behind is not None:
                behind.result()
                written(len(mine))
        strategy.barrier()  # every rank's blocks are written
        if strategy.is_main:
            job.finish(group, strategy.world_size)
    return xr.open_zarr(out_path)


def encode_with_dask(client, cube_path, patches_path, checkpoint_path, out_path, *, batch_size=1024, block=4096,
                     symmetry="auto", refine=True, frame="reference", overwrite=False, reuse=False, config_text=None,
                     variable=None, log=print):
    """``rvae encode --dask mpi|slurm``: every block still to do is a task on the cluster's workers, which
    read their block's region and write its results themselves; the job (model included) is
    sent to each worker once. Writes the same store as :func:`encode`."""
    job = EncodeJob(cube_path, patches_path, checkpoint_path, out_path, block=block, symmetry=symmetry,
                    refine=refine, frame=frame, variable=variable, config_text=config_text)
    with output_lock(out_path):
        group = job.open(overwrite, reuse)
        if group is None:
            log(f"{out_path}: up to date (complete results of this same run), kept")
            return xr.open_zarr(out_path)
        todo = np.flatnonzero(blocks_done(group) == 0)
        if len(todo) < job.plan.n_blocks:
            log(f"resuming: {job.plan.n_blocks - len(todo)} of {job.plan.n_blocks} blocks already written")
        shared = client.scatter(job, broadcast=True)
        # (client.map takes a batch_size of its own: the task's goes in through partial)
        futures = client.map(partial(_encode_block_task, batch_size=batch_size), todo.tolist(), job=shared)
        from distributed import as_completed

        for count, future in enumerate(as_completed(futures), 1):
            future.result()
            if count == len(todo) or count % max(1, len(todo) // 10) == 0:
                log(f"encoded block {count}/{len(todo)} on {len(client.scheduler_info()['workers'])} workers")
        job.finish(group, len(client.scheduler_info()["workers"]))
    return xr.open_zarr(out_path)


def encode_on(dask, *paths, precision="fp32", threads=None, timeout=300, **options):
    """``rvae encode`` where ``dask`` (the ``--dask`` choice) says: on the Dask cluster's workers
    for ``mpi`` and ``slurm`` (they run one torch thread per task), else in this process or its
    launch's ranks (:func:`encode`)."""
    if dask not in ("mpi", "slurm"):
        return encode(*paths, precision=precision, threads=threads, timeout=timeout, **options)
    check_encode_on_dask(dask, precision=precision, threads=threads, timeout=timeout)
    from distributed import get_client

    return encode_with_dask(get_client(), *paths, **options)


def _encode_block_task(b, job, batch_size):
    """A Dask task: encode block ``b`` of ``job`` and write it (one thread of torch per task:
    the worker runs tasks side by side)."""
    torch.set_num_threads(1)
    samples, region, reference = job.cut(b)
    job.write(zarr.open_group(str(job.out_path), mode="r+"), region, job.encode(samples, batch_size), b, reference)
    return b


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


def _open_or_create(job, overwrite, reuse):
    """The results group to fill (a new one, or an unfinished one of this same run), or None when
    ``reuse`` finds complete results of this run. Called with the output lock held."""
    out = Path(job.out_path)
    if out.exists() and not overwrite:
        try:
            existing = dict(zarr.open_group(str(out), mode="r").attrs)
        except Exception as err:  # not a Zarr store at all
            raise FileExistsError(f"{str(out)!r} exists and is not a results store; choose another output or "
                                  f"pass --overwrite") from err
        if "complete" not in existing:
            raise FileExistsError(f"{str(out)!r} exists and is not a results store; choose another output or "
                                  f"pass --overwrite")
        differ = [key for key, value in job.run_record.items() if existing.get(key) != value]
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
        template = results_template(job.plan, job.cube, job.model, job.symmetry, job.attrs,
                                    reference_symmetry=job.lattice[1] if job.lattice else None,
                                    reference_shift=job.reference_spectrum is not None)
        template.to_zarr(staging, compute=False, zarr_format=3,
                         encoding={name: {"compressors": results_codecs()} for name in template.data_vars})
        group = zarr.open_group(str(staging), mode="r+")
        create_progress(group, job.plan.n_blocks)
        zarr.consolidate_metadata(str(staging))  # the template's consolidated metadata lacked it
        for name in template.coords:  # coordinates are in memory: write them now, not with the blocks
            group[name][:] = template[name].values
    return zarr.open_group(str(out), mode="r+")


def encoded(cube_path, patches_path, checkpoint_path, out_path, *, block=4096, symmetry="auto", refine=True,
            frame="reference", variable=None, **_):
    """Whether ``out_path`` holds complete results of this same encode: what ``rvae run`` would keep."""
    if not Path(out_path).exists():
        return False
    return EncodeJob(cube_path, patches_path, checkpoint_path, out_path, block=block, symmetry=symmetry,
                     refine=refine, frame=frame, variable=variable).done()
