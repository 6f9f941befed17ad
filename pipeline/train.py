"""The train stage: fit an rVAE to the patch store with a plain torch optimizer on ``model.loss``.

The same loop runs as one process or as N data-parallel ranks (``backend`` ``ddp`` or
``horovod``; :mod:`pipeline.distributed`). Every rank builds the model from the same seed and
starts from rank 0's parameters; each reads its own shard of the patch store
(:class:`~pipeline.dataset.ShardedPatchReader`); gradients are averaged, so N ranks with batch b
take the steps one rank would take with batch N*b.

Checkpoints hold weights, optimizer, epoch, step within the epoch, every rank's RNG state and
the run's settings, and are written atomically. SIGTERM or SIGUSR1 (SLURM preemption) saves at
the next step boundary and exits with :data:`~pipeline.preemption.PREEMPTED_EXIT` (75); the same command then resumes.
"""
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import build_model, load_checkpoint, save_checkpoint

from .dataset import ShardedPatchReader
from .distributed import make_strategy, precision_context
from .preemption import Preempted, PreemptionFlag
from .progress import format_duration
from .provenance import store_fingerprint
from .stores import check_distinct, check_writable, output_lock, writing

# epochs="auto": this many, or enough for MIN_STEPS optimizer steps: an image of a few hundred atom
# columns makes a stack of a few batches, and 30 epochs of it leave the rVAE's decoder unconverged
# (docs/bench_accuracy.md).
DEFAULT_EPOCHS, MIN_STEPS = 30, 300
# Spectra: a shift is read to a twentieth of a channel against the decoder's spectra, which 30 epochs
# of a 64 x 64 scan (960 steps) leave rippled: its shift map 0.067 channel from the truth, the classical
# estimate's 0.049; after 3,200 steps 0.047 (docs/bench_spectra.md). A step of a spectrum is cheap.
MIN_STEPS_SPECTRA = 3000
# restarts="auto" on such a stack: this many starts, each tried for TRIAL of the steps. On a few hundred
# windows some starts leave the angle collapsed to its prior; their loss is already the worst early on.
RESTARTS, TRIAL = 3, 0.15
# A start can also collapse later than its trial: after the trial, the encoder's angle may still give
# way to its prior (SrTiO3 ABF: 4-5 deg posterior std for every start at 15% of the steps, 50-57 deg at
# the end for two of three). A trained model whose mean posterior angle std exceeds this is trained
# again from the next start; models that learned the angle read 0.2-3.8 deg (docs/bench_accuracy.md).
UNDETERMINED_DEG = 20.0
KL_WARMUP = 0.3  # the default fraction of the steps over which the KL weight rises to 1


def auto_epochs(steps_per_epoch, min_steps=MIN_STEPS):
    """The epochs ``epochs="auto"`` trains for: :data:`DEFAULT_EPOCHS`, or enough for ``min_steps``
    (:data:`MIN_STEPS`; :data:`MIN_STEPS_SPECTRA` for spectra)."""
    return max(DEFAULT_EPOCHS, math.ceil(min_steps / steps_per_epoch))


def kl_weight(step, steps, warmup):
    """The latents' KL weight at ``step`` of ``steps``: rising linearly from 0.01 to 1 over the
    first ``warmup`` fraction of them (Pyro's scales must be positive), then 1."""
    return 1.0 if warmup == 0 else min(1.0, max(0.01, (step + 1) / (warmup * steps)))


@dataclass(frozen=True)
class TrainOptions:
    """What :func:`train` was asked for ("auto" where it decides)."""
    epochs: object = "auto"
    batch_size: object = "auto"
    lr: float = 1e-3
    restarts: object = "auto"
    kl_warmup: float = KL_WARMUP
    seed: int = 0
    threads: object = None
    precision: str = "fp32"
    compile: bool = False
    checkpoint_every: object = None


def train(patches_path, checkpoint_path, *, model_options=None, epochs="auto", batch_size="auto", lr=1e-3,
          restarts="auto", kl_warmup=KL_WARMUP, seed=0, threads=None, backend="none", compression="none",
          precision="fp32", compile=False, checkpoint_every=None, timeout=300, overwrite=False, reuse=False, log=print):
    """``rvae train``: returns the trained model (unwrapped); the checkpoint is written atomically.

    ``model_options`` are :class:`models.RVAE` keyword arguments; ``batch_size`` is per rank
    (``"auto"``: see :class:`~pipeline.dataset.ShardedPatchReader`); ``epochs="auto"``:
    :func:`auto_epochs` of the steps an epoch takes (on this many ranks); ``restarts``: starts
    tried before training on the best (:func:`_rank_starts`), then on the next where a trained model
    leaves the angle undetermined (:data:`UNDETERMINED_DEG`); ``kl_warmup``: the fraction of the
    steps over which the KL weight rises to 1 (:func:`kl_weight`).
    ``reuse``: a finished checkpoint of this same run and length is kept (``rvae run`` continuing).
    One line per epoch (rank 0) reports the mean -ELBO per sample and the images/s of all ranks.
    """
    check_distinct([checkpoint_path], [patches_path])
    if Path(checkpoint_path).is_dir():
        raise IsADirectoryError(f"checkpoint {str(checkpoint_path)!r} is a directory; name a file, e.g. model.ckpt")
    options = TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, restarts=restarts, kl_warmup=kl_warmup,
                           seed=seed, threads=threads, precision=precision, compile=compile,
                           checkpoint_every=checkpoint_every)
    strategy = make_strategy(backend, timeout=timeout, compression=compression)
    strategy.setup()
    try:
        # rank 0 writes the checkpoint: it alone holds the output's lock
        with output_lock(checkpoint_path) if strategy.is_main else contextlib.nullcontext():
            return _train(strategy, patches_path, checkpoint_path, model_options or {}, options, overwrite=overwrite,
                          reuse=reuse, log=log if strategy.is_main else (lambda line: None))
    finally:
        strategy.shutdown()


def _train(strategy, patches_path, checkpoint_path, model_options, options, *, overwrite, reuse, log):
    """Resolve the schedule, resume or choose a start, and train to the end (:class:`TrainingLoop`)."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = strategy.device
    log(f"training on {strategy.describe()}, {torch.get_num_threads()} torch thread(s) per rank")
    reader = ShardedPatchReader(patches_path, batch_size=options.batch_size, rank=strategy.rank,
                                world_size=strategy.world_size, seed=options.seed, pin_memory=device.type == "cuda")
    model_options = resolve_model_options(reader.spec, model_options)
    epochs, restarts, settings = _schedule(reader, patches_path, model_options, options, strategy.world_size, log)
    steps_per_epoch = reader.steps_per_epoch(1)
    resumed = _resume_state(checkpoint_path, settings, epochs, overwrite, reuse)
    if resumed is not None and resumed.get("finished"):
        log(f"{checkpoint_path}: up to date (trained on this patch store with these settings), kept")
        return load_checkpoint(checkpoint_path)[0]

    autocast = precision_context(device, options.precision)
    total_steps = epochs * steps_per_epoch
    if resumed is not None:
        start_seed = resumed.get("start_seed", options.seed)
        order = resumed.get("start_order", [start_seed])
    elif restarts > 1:
        order = _rank_starts(strategy, reader, model_options, options.lr, options.kl_warmup, options.seed,
                             restarts, total_steps, autocast, log)
        start_seed = order[0]
    else:
        start_seed = options.seed
        order = [start_seed]
    again = False
    while True:
        model = _train_from(strategy, reader, model_options, options, autocast, epochs, log, resumed,
                            dict(path=checkpoint_path, settings=settings, start_seed=start_seed, start_order=order),
                            again)
        later = order[order.index(start_seed) + 1:] if start_seed in order else []
        spread = _angle_spread(strategy, reader, model) if later else None
        if spread is None or spread <= UNDETERMINED_DEG:
            return model
        log(f"the encoder leaves the angle undetermined (mean posterior std {spread:.0f} deg on the training "
            f"windows): training again from seed {later[0]}, the next start")
        start_seed, resumed, again = later[0], None, True


def _train_from(strategy, reader, model_options, options, autocast, epochs, log, resumed, checkpoint, again=False):
    """Train one start (``checkpoint["start_seed"]``) to the end, or resume it from ``resumed``;
    ``again``: a start trained after another was set aside, whose finished checkpoint it replaces
    at once (a run stopped now resumes this start, not keeps the other)."""
    model, wrapped, optimizer = _start(strategy, reader, model_options, options.lr, checkpoint["start_seed"])
    loop = TrainingLoop(strategy, reader, model, torch.compile(wrapped) if options.compile else wrapped, optimizer,
                        autocast, epochs=epochs, kl_warmup=options.kl_warmup, log=log)
    loop.checkpoint = checkpoint
    start_epoch, start_step = 1, 0
    if again:
        loop.save(1, 0)
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        start_epoch, start_step, loop.history = resumed["epoch"], resumed["step"], resumed["history"]
        # after wrapping: Horovod's DistributedOptimizer is a new optimizer built from the param
        # groups, without the state of the one it wraps (every rank loads the same state)
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["rng"][strategy.rank])  # the ELBO noise goes on where it stopped
        log(f"resuming from {checkpoint['path']}: epoch {start_epoch}, step {start_step}")
    loop.run(start_epoch, start_step, options.checkpoint_every)
    return model


def _angle_spread(strategy, reader, model, batches=4):
    """The mean posterior std of the encoder's angle over a few batches of every rank's windows,
    in degrees (None for a model without an angle)."""
    if not model.rotation:
        return None
    scales = []
    for i, batch in enumerate(reader.batches(1)):
        scales.append(model.encode(batch.to(strategy.device))[1][:, 0].float().mean().item())
        if i + 1 == batches:
            break
    return math.degrees(strategy.allreduce_mean(float(np.mean(scales))))


IMAGE_ONLY = ("rotation", "translation", "disc", "angle_prior")  # model options that turn or shift a window
SPECTRUM_ONLY = ("shift",)


def resolve_model_options(spec, options):
    """The model's keyword arguments for the samples ``spec`` makes, from the model section's
    values: an rVAE's for windows and frames, a shift-invariant VAE's
    (:class:`models.SpectrumVAE`) for spectra, each given only the options it has; likelihood
    ``auto``: bernoulli for windows, gaussian for spectra. What a checkpoint records."""
    options = dict(options)
    likelihood = options.pop("likelihood", "auto")
    if spec.mode != "spectra":
        for name in SPECTRUM_ONLY:
            options.pop(name, None)
        if likelihood == "poisson":
            raise ValueError("likelihood poisson scores counts, for spectra (--mode spectra); windows take bernoulli "
                             "or gaussian")
        return {**options, "likelihood": "bernoulli" if likelihood == "auto" else likelihood}
    for name in IMAGE_ONLY:
        options.pop(name, None)
    resolved = {"kind": "spectrum", **options, "likelihood": "gaussian" if likelihood == "auto" else likelihood}
    if likelihood == "poisson":  # the model scores counts: the samples' normalisation undone
        if spec.background != "none" or spec.offset < 0:
            raise ValueError("likelihood poisson scores counts, and these spectra are not counts (a background was "
                             "subtracted, or values are negative); use gaussian")
        resolved.update(count_scale=spec.scale, count_offset=spec.offset)
    return resolved


def _schedule(reader, patches_path, model_options, options, world_size, log=lambda line: None):
    """``(epochs, restarts, settings)``: "auto" resolved for this patch store on this many ranks,
    and the settings a checkpoint records (what makes two trainings the same run)."""
    steps_per_epoch = reader.steps_per_epoch(1)
    epochs, restarts = options.epochs, options.restarts
    if epochs == "auto":
        min_steps = MIN_STEPS_SPECTRA if reader.spec.mode == "spectra" else MIN_STEPS
        epochs = auto_epochs(steps_per_epoch, min_steps)
        log(f"epochs auto: {epochs} ({steps_per_epoch} step(s) of {reader.batch_size} x {world_size} rank(s) "
            f"per epoch; at least {DEFAULT_EPOCHS} epochs and {min_steps} steps)")
        if restarts == "auto":
            restarts = RESTARTS if epochs > DEFAULT_EPOCHS else 1
    restarts = 1 if restarts == "auto" else restarts
    settings = {"patches": str(patches_path), "patches_fingerprint": store_fingerprint(patches_path, "patches"),
                "batch_size": reader.batch_size, "lr": options.lr, "restarts": restarts,
                "kl_warmup": options.kl_warmup, "seed": options.seed, "world_size": world_size,
                "model": dict(model_options)}
    return epochs, restarts, settings


def trained(patches_path, checkpoint_path, *, world_size=1, model_options=None, **options):
    """Whether ``checkpoint_path`` holds a finished training of this patch store with these
    options (:func:`train`'s) on ``world_size`` ranks: what ``rvae run`` would keep."""
    if not Path(checkpoint_path).is_file():
        return False
    known = {name: value for name, value in options.items() if name in TrainOptions.__dataclass_fields__}
    options = TrainOptions(**known)
    reader = ShardedPatchReader(patches_path, batch_size=options.batch_size, world_size=world_size, seed=options.seed)
    model_options = resolve_model_options(reader.spec, model_options or {})
    epochs, _, settings = _schedule(reader, patches_path, model_options, options, world_size)
    _, payload = load_checkpoint(checkpoint_path)
    return bool(payload.get("finished")) and payload.get("settings") == settings and payload.get("epochs") == epochs


class TrainingLoop:
    """The epochs of one run on one rank: steps, the preemption vote, checkpoints, a line per epoch.

    ``checkpoint``: ``{path, settings, start_seed, start_order}``, what every checkpoint records besides the
    weights, the optimizer and where the run stands."""

    def __init__(self, strategy, reader, model, step_fn, optimizer, autocast, *, epochs, kl_warmup, log):
        self.strategy, self.reader, self.model, self.step_fn = strategy, reader, model, step_fn
        self.optimizer, self.autocast, self.log = optimizer, autocast, log
        self.epochs, self.kl_warmup = epochs, kl_warmup
        self.steps_per_epoch = reader.steps_per_epoch(1)
        self.history, self.checkpoint = [], {}

    def save(self, epoch, step, finished=False):
        """Write the checkpoint (rank 0), after gathering every rank's RNG state; all ranks wait for it."""
        rng = self.strategy.allgather(torch.get_rng_state())
        if self.strategy.is_main:
            path = self.checkpoint["path"]
            with writing(path):
                save_checkpoint(path, self.model, optimizer=self.optimizer.state_dict(), epoch=epoch, step=step,
                                finished=finished, epochs=self.epochs, rng=rng, history=self.history,
                                settings=self.checkpoint["settings"], start_seed=self.checkpoint["start_seed"],
                                start_order=self.checkpoint.get("start_order", [self.checkpoint["start_seed"]]),
                                patch_attrs=self.reader.attrs)
        self.strategy.barrier()  # no rank exits (and gets its peers killed) before the file is written

    def run(self, start_epoch, start_step, checkpoint_every=None):
        """Train from ``start_epoch``, ``start_step`` to the last epoch; ``Preempted`` after saving
        when any rank was signalled."""
        strategy, total_steps = self.strategy, self.epochs * self.steps_per_epoch
        steps_done, vote, epoch_times = 0, None, []
        with PreemptionFlag() as preemption:
            for epoch in range(start_epoch, self.epochs + 1):
                first = start_step if epoch == start_epoch else 0
                start, total, seen = time.perf_counter(), 0.0, 0
                for step, batch in enumerate(self.reader.batches(epoch, first, last_epoch=self.epochs), start=first):
                    weight = kl_weight((epoch - 1) * self.steps_per_epoch + step, total_steps, self.kl_warmup)
                    loss = _step(self.model, self.step_fn, self.optimizer,
                                 batch.to(strategy.device, non_blocking=True), weight, self.autocast)
                    total, seen, steps_done = total + loss * len(batch), seen + len(batch), steps_done + 1
                    # Every rank must stop at the same step: each step the ranks vote on whether any
                    # was signalled, without waiting; the vote is read a step later, by when it has
                    # arrived, so the ranks meet once per step (in the gradient allreduce), not twice.
                    if vote is not None and vote() > 0:
                        self.save(epoch, step + 1)
                        raise Preempted(f"stopped by {preemption.received or 'a signal on another rank'} at epoch "
                                        f"{epoch}, step {step + 1}; checkpoint saved to {self.checkpoint['path']}: "
                                        f"run the same command again to resume")
                    vote = strategy.start_allreduce_mean(preemption.received is not None)
                    if checkpoint_every and steps_done % checkpoint_every == 0:
                        self.save(epoch, step + 1)
                self._end_epoch(epoch, time.perf_counter() - start, total, seen, epoch_times)
            if vote is not None:
                vote()  # the last step's vote lands before the ranks part
        if start_epoch > self.epochs:
            self.save(self.epochs + 1, 0, finished=True)

    def _end_epoch(self, epoch, seconds, total, seen, epoch_times):
        """The epoch's line and checkpoint."""
        mean_loss = self.strategy.allreduce_mean(total / seen) if seen else float("nan")
        self.history.append(mean_loss)
        if not seen:  # stopped after its last step: the restart only marks the epoch done
            self.log(f"{time.strftime('%H:%M:%S')} epoch {epoch:3d}/{self.epochs}  (its last step was done before "
                     f"the restart)")
        else:
            epoch_times.append(seconds)
            ranks = self.strategy.world_size
            self.log(f"{time.strftime('%H:%M:%S')} epoch {epoch:3d}/{self.epochs}  loss {mean_loss:10.3f}  "
                     f"{seen * ranks / seconds:8.0f} img/s  ({ranks} rank(s))  {seconds:.2f} s, "
                     f"ETA {format_duration(np.median(epoch_times) * (self.epochs - epoch))}")
        self.save(epoch + 1, 0, finished=epoch == self.epochs)


def _step(model, step_fn, optimizer, batch, weight, autocast):
    """One optimizer step on ``batch`` with the latents' KL weight at ``weight``; returns the loss."""
    model.kl_weight.fill_(weight)
    with autocast:
        loss = step_fn(batch)
    optimizer.zero_grad()  # (Horovod's optimizer takes no set_to_none; None is the default)
    loss.backward()
    optimizer.step()
    return loss.item()


def make_optimizer(model, lr):
    """Adam over the model's parameters, fused (one kernel for every parameter's update: a step of a
    small model spends as long in a per-tensor optimizer as in its backward pass)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def _start(strategy, reader, model_options, lr, seed):
    """A fresh model from ``seed`` (the same parameters on every rank), wrapped for the strategy,
    with its optimizer; the ELBO noise is seeded per rank."""
    torch.manual_seed(seed)
    model = build_model({"image_shape": reader.sample_shape, **model_options}).to(strategy.device)
    optimizer = make_optimizer(model, lr)
    with torch.no_grad():  # materialise any lazily created (Pyro) parameters before wrapping
        model.loss(torch.zeros(2, *reader.sample_shape, device=strategy.device))
    wrapped, optimizer = strategy.wrap(model, optimizer)
    torch.manual_seed(seed * 1_000_003 + strategy.rank + 1)  # independent ELBO noise per rank
    return model, wrapped, optimizer


def _rank_starts(strategy, reader, model_options, lr, kl_warmup, seed, restarts, total_steps, autocast, log):
    """The seeds of ``restarts`` starts (``seed``, ``seed + 1000``, ...), best first: each is trained
    for :data:`TRIAL` of the steps, on the same batches and KL schedule as the run, and scored by
    its mean loss over the last quarter of them (averaged over ranks); lowest first."""
    trial = max(1, round(TRIAL * total_steps))
    scores = {}
    for start_seed in (seed + 1000 * k for k in range(restarts)):
        model, wrapped, optimizer = _start(strategy, reader, model_options, lr, start_seed)
        losses, epoch = [], 1
        while len(losses) < trial:
            for batch in reader.batches(epoch):
                weight = kl_weight(len(losses), total_steps, kl_warmup)
                losses.append(_step(model, wrapped, optimizer, batch.to(strategy.device, non_blocking=True), weight,
                                    autocast))
                if len(losses) == trial:
                    break
            epoch += 1
        scores[start_seed] = strategy.allreduce_mean(float(np.mean(losses[-max(1, trial // 4):])))
    order = sorted(scores, key=scores.get)
    log(f"restarts: {restarts} starts of {trial} steps each, loss "
        f"{', '.join(f'{score:.1f} (seed {s})' for s, score in scores.items())}: training on from seed {order[0]}")
    return order


def _resume_state(checkpoint_path, settings, epochs, overwrite, reuse):
    """The checkpoint of this same run to resume from (or, with ``reuse``, a finished one trained
    for ``epochs`` to keep), or None to start afresh."""
    if not Path(checkpoint_path).exists() or overwrite:
        return None
    _, payload = load_checkpoint(checkpoint_path)
    same_run = payload.get("settings") == settings
    if payload.get("finished", True):
        if reuse and same_run and payload.get("epochs") == epochs:
            return payload
        check_writable(checkpoint_path, overwrite)  # raises: a finished model is never replaced silently
    if not same_run:
        differ = sorted(k for k in settings if (payload.get("settings") or {}).get(k) != settings[k])
        raise FileExistsError(f"{str(checkpoint_path)!r} is an unfinished checkpoint of a different run (its "
                              f"{', '.join(differ)} differ); pass --overwrite to start afresh")
    return payload
