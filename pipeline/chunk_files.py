"""A cube's chunks decoded straight from their files into the arrays Dask passes on.

zarr-python decodes a chunk into a buffer of its own, then copies it into the selection's output,
a second new buffer. At the ingest stage's 32 MiB chunks both are fresh mappings (glibc recycles
no buffer of 32 MiB or more), whose pages the kernel faults in and zeroes one by one. Decoding
into the one array that Dask hands on halves those pages and drops the copy. Covered: local,
unsharded Zarr v3 arrays that Blosc alone compresses (the pipeline's integer cubes); any other
array is read through zarr.
"""
import sys
from pathlib import Path

import dask.array as da
import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec
from zarr.core.chunk_grids import RegularChunkGrid


def readable_directly(array):
    """Whether :class:`ChunkFiles` can read ``array`` (a ``zarr.Array``) without zarr: Blosc,
    optionally followed by a CRC-32C."""
    codecs = list(array.metadata.codecs if array.metadata.zarr_format == 3 else ())
    if codecs and isinstance(codecs[-1], Crc32cCodec):
        codecs.pop()
    return (isinstance(array.store, zarr.storage.LocalStore) and len(codecs) == 2
            and isinstance(array.metadata.chunk_grid, RegularChunkGrid)
            and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
            and (array.dtype.itemsize == 1 or codecs[0].endian.value == sys.byteorder))


def checksum_matches(data):
    """Whether ``data`` (a chunk file's bytes) ends with the CRC-32C of what precedes it."""
    contents = np.frombuffer(data, np.uint8)[:-4]  # a view: google_crc32c takes arrays, not memoryviews
    return len(data) >= 4 and google_crc32c.value(contents) == int.from_bytes(data[-4:], "little")


class ChunkFiles:
    """Reads a chunk of a :func:`readable_directly` array from its file: a Dask block function."""

    def __init__(self, array, missing_is_fill=True):
        self.missing_is_fill = missing_is_fill
        self.root = Path(array.store.root) / array.path
        self.keys = array.metadata.chunk_key_encoding
        self.chunk_shape, self.dtype, self.fill_value = array.chunks, array.dtype, array.fill_value
        self.blosc = numcodecs.Blosc()  # decoding takes the codec's settings from each chunk's header
        self.checksummed = isinstance(array.metadata.codecs[-1], Crc32cCodec)

    def __call__(self, block_info=None):
        info = block_info[None]
        path = self.root / self.keys.encode_chunk_key(tuple(info["chunk-location"]))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if not self.missing_is_fill:  # the store says every chunk was written: this one is lost
                raise FileNotFoundError(f"chunk {path} is missing: it was written, and has been lost since")
            return np.full(info["chunk-shape"], self.fill_value, self.dtype)  # never written: fill value
        if self.checksummed:
            if not checksum_matches(data):
                raise RuntimeError(f"{path} is damaged: its CRC-32C does not match its contents")
            data = memoryview(data)[:-4]  # (Blosc reads a view)
        chunk = np.empty(self.chunk_shape, self.dtype)  # edge chunks are stored whole, padded
        # Blosc's 16-byte header: uncompressed size at bytes 4-7, compressed size at 12-15. Blosc
        # itself trusts it, and would read past the end of a truncated file.
        nbytes, _, cbytes = np.frombuffer(data, "<u4", count=3, offset=4) if len(data) >= 16 else (0, 0, 0)
        if cbytes != len(data) or nbytes != chunk.nbytes:
            raise RuntimeError(f"{path} is {len(data)} bytes; its Blosc header says {cbytes}, "
                               f"decoding to {nbytes} (a chunk is {chunk.nbytes})")
        try:
            self.blosc.decode(data, out=chunk)
        except RuntimeError as err:  # Blosc's own message does not say which chunk
            raise RuntimeError(f"{path}: {err}") from err
        return chunk[tuple(slice(0, n) for n in info["chunk-shape"])]


def read_chunks(array, missing_is_fill=True):
    """``array`` (a ``zarr.Array``) as a Dask array of its chunks, each read by :class:`ChunkFiles`;
    a missing chunk file reads as the fill value, or (``missing_is_fill=False``) is an error."""
    return da.map_blocks(ChunkFiles(array, missing_is_fill), chunks=da.core.normalize_chunks(array.chunks, array.shape),
                         dtype=array.dtype, meta=np.empty((0,) * array.ndim, array.dtype))
