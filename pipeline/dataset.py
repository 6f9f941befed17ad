"""Reading the patch store for training: sharded by rank, shuffled by chunk, prefetched, normalised.

Random access to single samples in a Zarr store costs a chunk decompression per sample; instead
each epoch permutes *read units* (a chunk, or an equal part of one when a small store has fewer
chunks than ranks need), deals them to the ranks round-robin, and each rank shuffles the samples
of a few units at a time (the shuffle buffer). A background thread reads the next units while
the model computes. Everything depends only on ``(seed, epoch, rank)``, so a resumed run sees
exactly the batches an uninterrupted one would.
"""
import queue
import threading

import numpy as np
import torch
import zarr

from .stores import open_store
from .windows import WindowSpec

UNITS_PER_RANK = 4  # at least this many read units per rank per epoch, for a useful shuffle


class ShardedPatchReader:
    """Batches of the patch store for one rank.

    ``steps_per_epoch`` is the same on every rank (the smallest shard decides), since every
    optimizer step is a collective operation under DDP and Horovod.
    """

    def __init__(self, path, *, batch_size, rank=0, world_size=1, seed=0, buffer_units=4, prefetch=2,
                 pin_memory=False):
        ds = open_store(path, what="patch store")
        if "patches" not in ds:
            raise ValueError(f"{str(path)!r} is not a patch store (no 'patches' variable); make one with rvae patches")
        self.array = zarr.open_group(str(path), mode="r")["patches"]
        self.attrs = dict(ds.attrs)
        self.spec = WindowSpec.from_attrs(self.attrs)
        n, chunk = self.array.shape[0], self.array.chunks[0]
        unit = min(chunk, max(1, -(-n // (world_size * UNITS_PER_RANK))))
        self.units = [(start, min(start + unit, n)) for start in range(0, n, unit)]
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.buffer_units, self.prefetch, self.pin_memory = buffer_units, prefetch, pin_memory
        if self.steps_per_epoch(0) == 0:
            raise ValueError(f"patch store {str(path)!r} has {n} samples: too few for {world_size} rank(s) "
                             f"with batch size {batch_size}; lower --batch-size")

    @property
    def sample_shape(self):
        return tuple(self.array.shape[1:])

    def _deal(self, epoch):
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        return [[self.units[i] for i in order[r::self.world_size]] for r in range(self.world_size)]

    def steps_per_epoch(self, epoch):
        return min(sum(stop - start for start, stop in shard) for shard in self._deal(epoch)) // self.batch_size

    def batches(self, epoch, start_step=0):
        """Yield this rank's batches ``start_step, ..., steps_per_epoch - 1`` of ``epoch``."""
        units = self._deal(epoch)[self.rank]
        steps = self.steps_per_epoch(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        chunks = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def read():
            for start, end in units:
                if stop.is_set():
                    return
                chunks.put(self.spec.normalise(self.array[start:end]))
            chunks.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            pending, step, finished = np.empty((0, *self.sample_shape), np.float32), 0, False
            while step < steps:
                group = []
                while not finished and len(group) < self.buffer_units:
                    block = chunks.get()
                    finished = block is None
                    if not finished:
                        group.append(block)
                if group:
                    fresh = np.concatenate(group)
                    pending = np.concatenate([pending, fresh[rng.permutation(len(fresh))]])
                while len(pending) >= self.batch_size and step < steps:
                    batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                    if step >= start_step:
                        tensor = torch.from_numpy(np.ascontiguousarray(batch))
                        yield tensor.pin_memory() if self.pin_memory else tensor
                    step += 1
                if finished and len(pending) < self.batch_size:
                    break
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    reader.join(timeout=0.1)
