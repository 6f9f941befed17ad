"""How the pipeline's Zarr stores are compressed, chosen by what the values are.

Integer data are detector counts: Blosc LZ4 with bit shuffle, the codec counting detectors write
their own HDF5 files with. Against Zstandard (zarr's default) it decodes 1.5-3x faster per thread
at 0.9-1.25x the ratio (uint16 4D-STEM counts: ratio 7.9 vs 6.3; the real EDS spectrum image: 10.1
vs 11.5), and encodes 3-15x faster, so ingest and every later pass over the cube cost less.
Floating-point cubes keep Zstandard, which finds the repeats in quantised floats that shuffling
hides (ratio 3-5 vs 1.2-1.7). Patch stores are rewritten per extraction and read every epoch, so
floats there take LZ4 with byte shuffle, fast both ways. ``benchmarks/bench_codecs.py`` prints
these figures.
"""
import numpy as np
import zarr

# Every chunk the pipeline writes ends with its CRC-32C (Zarr v3's crc32c codec), checked whenever
# it is read: a chunk damaged on disk is an error naming it, never values that decode silently
# (a few zeroed bytes in an LZ4 chunk can decode without error). It also lets a store's
# fingerprint cover every chunk for a 4-byte read each (pipeline.provenance).
CHECKSUM = zarr.codecs.Crc32cCodec()
COUNTS = (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), CHECKSUM)
FAST_FLOATS = (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), CHECKSUM)
DENSE_FLOATS = (zarr.codecs.ZstdCodec(level=0), CHECKSUM)


def cube_codecs(dtype):
    """Compressors of an ingested cube's data: written once, read by every later stage."""
    return COUNTS if np.dtype(dtype).kind in "iu" else DENSE_FLOATS


def patch_codecs(dtype):
    """Compressors of a patch store's samples: written per extraction, read every epoch."""
    return COUNTS if np.dtype(dtype).kind in "iu" else FAST_FLOATS


def results_codecs():
    """Compressors of a results store's variables (float32 maps written once, read by analyses)."""
    return DENSE_FLOATS


def checksummed(array):
    """Whether every chunk of ``array`` (a ``zarr.Array``) ends with its CRC-32C."""
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    return bool(codecs) and isinstance(codecs[-1], zarr.codecs.Crc32cCodec)
