"""Rectangles of the scan read from a lazy cube, each chunk decoded once while reads share it.

The encode stage reads one rectangle (a block's windows and their margin) after another, in an
order that walks down columns of chunks, so consecutive rectangles mostly fall in the same few
chunks. Computing each rectangle through Dask would decode every chunk it touches anew; this
reader keeps the last few decoded chunks (a bounded cache) and copies rectangles out of them.
"""
from collections import OrderedDict

import numpy as np


class RegionReader:
    """``read((r0, r1), (c0, c1))``: the cube's values over those scan rows and columns (every
    trailing axis whole), from a Dask array whose first two axes are the scan."""

    def __init__(self, data, cached_chunks=6):
        self.data, self.cached_chunks = data, cached_chunks
        self.bounds = [np.cumsum((0, *chunks)) for chunks in data.chunks[:2]]
        self.cache = OrderedDict()

    def chunk(self, i, j):
        """Chunk ``(i, j)`` of the scan axes, decoded (from the cache when it is there)."""
        if (i, j) in self.cache:
            self.cache.move_to_end((i, j))
        else:
            self.cache[i, j] = self.data.blocks[i, j].compute(scheduler="sync")
            if len(self.cache) > self.cached_chunks:
                self.cache.popitem(last=False)
        return self.cache[i, j]

    def read(self, rows, cols):
        out = np.empty((rows[1] - rows[0], cols[1] - cols[0], *self.data.shape[2:]), self.data.dtype)
        (rb, cb) = self.bounds
        for i in range(np.searchsorted(rb, rows[0], "right") - 1, np.searchsorted(rb, rows[1], "left")):
            for j in range(np.searchsorted(cb, cols[0], "right") - 1, np.searchsorted(cb, cols[1], "left")):
                r0, r1 = max(rows[0], rb[i]), min(rows[1], rb[i + 1])
                c0, c1 = max(cols[0], cb[j]), min(cols[1], cb[j + 1])
                out[r0 - rows[0]:r1 - rows[0], c0 - cols[0]:c1 - cols[0]] = \
                    self.chunk(i, j)[r0 - rb[i]:r1 - rb[i], c0 - cb[j]:c1 - cb[j]]
        return out
