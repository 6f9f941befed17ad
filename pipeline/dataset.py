"""Reading the patch store for training: sharded by rank, shuffled by chunk, prefetched, normalised.

Random access to single samples in a Zarr store costs a chunk decompression per sample; instead
each epoch permutes *read units* (a chunk, or an equal part of one when a small store has fewer
chunks than ranks need), deals them to the ranks round-robin, and each rank shuffles the samples
of a few units at a time (the shuffle buffer). A background thread reads and shuffles the next
units while the model computes, and the next epoch's first ones while this epoch ends.
Everything depends only on ``(seed, epoch, rank)``, so a resumed run sees exactly the batches an
uninterrupted one would.
"""
import collections
import queue
import threading

import numpy as np
import torch
import zarr

from .stores import open_store, reading
from .windows import WindowSpec

UNITS_PER_RANK = 4  # at least this many read units per rank per epoch, for a useful shuffle
DEFAULT_BATCH = 128  # batch_size="auto": this, or half of each rank's share of a smaller stack


class ShardedPatchReader:
    """Batches of the patch store for one rank.

    ``steps_per_epoch`` is the same on every rank (the smallest shard decides), since every
    optimizer step is a collective operation under DDP and Horovod. ``batch_size="auto"``:
    :data:`DEFAULT_BATCH`, or half of each rank's share of a stack too small for two such batches.
    """

    def __init__(self, path, *, batch_size, rank=0, world_size=1, seed=0, buffer_units=4, prefetch=1,
                 pin_memory=False):
        ds = open_store(path, what="patch store")
        if "patches" not in ds:
            raise ValueError(f"{str(path)!r} is not a patch store (no 'patches' variable); make one with rvae patches")
        self.path, self.array = path, zarr.open_group(str(path), mode="r")["patches"]
        self.attrs = dict(ds.attrs)
        self.spec = WindowSpec.from_attrs(self.attrs)
        n, chunk = self.array.shape[0], self.array.chunks[0]
        if batch_size == "auto":
            batch_size = max(1, min(DEFAULT_BATCH, n // world_size // 2))
        unit = min(chunk, max(1, -(-n // (world_size * UNITS_PER_RANK))))
        self.units = [(start, min(start + unit, n)) for start in range(0, n, unit)]
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.buffer_units, self.prefetch, self.pin_memory = buffer_units, prefetch, pin_memory
        self._ahead = None  # the next epoch's ShuffleFeed, started as this one ends
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

    def batches(self, epoch, start_step=0, *, last_epoch=None):
        """Yield this rank's batches ``start_step, ..., steps_per_epoch - 1`` of ``epoch``.

        When ``epoch < last_epoch``, the next epoch's first shuffle group is read and shuffled in the
        background while this epoch's last one is used, so no epoch starts by waiting on I/O.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.epoch != epoch:
            ahead.close()
            ahead = None
        feed = ahead or ShuffleFeed(self, epoch, last_epoch)
        steps = self.steps_per_epoch(epoch)
        pieces, held, step = collections.deque(), 0, 0
        try:
            for group in feed:
                pieces.append(group)
                held += len(group)
                while held >= self.batch_size and step < steps:
                    batch, held = take(pieces, self.batch_size), held - self.batch_size
                    if step >= start_step:
                        tensor = torch.from_numpy(batch)
                        yield tensor.pin_memory() if self.pin_memory else tensor
                    step += 1
                if step == steps:
                    break
        finally:
            feed.close()
            self._ahead = feed.next


def take(pieces, n):
    """The first ``n`` samples of the arrays queued in ``pieces``, removed from it: a view into one
    array, or a copy of just those ``n`` where they span two (never a copy of a whole group)."""
    parts = []
    while n:
        head = pieces.popleft()
        parts.append(head[:n])
        if len(head) > n:
            pieces.appendleft(head[n:])
        n -= len(parts[-1])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class ShuffleFeed:
    """One epoch of one rank's samples as shuffle groups (``buffer_units`` read units, concatenated,
    permuted and normalised), made by a background thread at most ``prefetch`` groups ahead.

    When the last group is taken and ``epoch < last_epoch``, the next epoch's feed starts
    (``next``): one epoch ahead at most, whatever the number of groups per epoch.
    """

    def __init__(self, reader, epoch, last_epoch=None):
        self.reader, self.epoch, self.last_epoch, self.next = reader, epoch, last_epoch, None
        self.groups = queue.Queue(maxsize=reader.prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._make, daemon=True)
        self.thread.start()

    def _make(self):
        reader = self.reader
        units = reader._deal(self.epoch)[reader.rank]
        rng = np.random.default_rng([reader.seed, self.epoch, reader.rank])
        firsts = range(0, len(units), reader.buffer_units)
        try:
            with reading(reader.path, "patch store"):
                for first in firsts:
                    # shuffled as stored (a uint16 store moves half the bytes), then normalised once
                    group = np.concatenate([reader.array[start:stop]
                                            for start, stop in units[first:first + reader.buffer_units]])
                    group = reader.spec.normalise(group[rng.permutation(len(group))])
                    if not self._put((group, first == firsts[-1])):
                        return
        except Exception as err:  # raised in the training loop, rather than left to hang it
            self._put((err, True))

    def _put(self, item):
        """Queue ``item`` unless the feed is closed first; returns whether it was queued."""
        while not self.stop.is_set():
            try:
                self.groups.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self):
        last = False
        while not last:
            group, last = self.groups.get()
            if isinstance(group, Exception):
                raise group
            if last and self.last_epoch is not None and self.epoch < self.last_epoch:
                self.next = ShuffleFeed(self.reader, self.epoch + 1, self.last_epoch)
            yield group

    def close(self):
        self.stop.set()
        self.thread.join()
