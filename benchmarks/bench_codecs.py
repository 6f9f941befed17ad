"""The stores' codecs against the alternatives, on real test files and synthetic counts, one run.

For each array: compression ratio, and encode and decode speed of one thread, of Zstandard
(zarr's default) and Blosc LZ4 with byte or bit shuffle; then each Blosc codec's ratio and decode
speed relative to Zstandard's. :mod:`pipeline.compression` picks bit-shuffled LZ4 for integer
counts and keeps Zstandard for float cubes from these numbers.

    python benchmarks/bench_codecs.py      # needs `make testdata` for the real files
"""
import os
import time
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import Blosc, Zstd

CODECS = {"zstd": Zstd(level=0), "lz4 byteshuffle": Blosc("lz4", 5, Blosc.SHUFFLE),
          "lz4 bitshuffle": Blosc("lz4", 5, Blosc.BITSHUFFLE)}
TEST_DATA = Path(os.environ.get("RVAE_TEST_DATA", Path.home() / ".cache/rvae-hpc/testdata"))


def arrays():
    """Named arrays: the real EDS and ADF files (when fetched), and synthetic counts and floats."""
    from pipeline.ingest import read_source
    from pipeline.synthetic import lattice_grains, rotating_diffraction

    found = {}
    real = [("EDS spectrum image (bcf)", "bcf_v2_50x50px.bcf", "EDX"),
            ("ADF image (hdf5)", "test_ADF_cropped.hdf5", None)]
    for name, file, dataset in real:
        if (TEST_DATA / file).exists():
            found[name] = read_source(TEST_DATA / file, dataset).to_dask("auto").compute()
        else:
            print(f"skipping {name}: {TEST_DATA / file} not found (make testdata)")
    rng = np.random.default_rng(0)
    patterns = rotating_diffraction(size=32, detector=128, dose=None)["data"].values
    found["4D-STEM counts, uint16"] = rng.poisson(20 * patterns).astype(np.uint16)
    found["Poisson(200) image, uint16"] = rng.poisson(200, (4096, 4096)).astype(np.uint16)
    found["4D-STEM, float32"] = rotating_diffraction(size=32, detector=128)["data"].values
    found["lattice image, float32"] = lattice_grains(size=1024)["data"].values
    return found


def measure(codec, data, repeats=3):
    """Ratio, the best of ``repeats`` encode and decode speeds (bytes of data per second), and the
    checksum's time on the encoded bytes over the decode's (the best of each)."""
    encode, decode, checksum = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encoded = codec.encode(data)
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        codec.decode(encoded)
        decode.append(time.perf_counter() - start)
        stored = np.frombuffer(encoded, np.uint8)
        start = time.perf_counter()
        google_crc32c.value(stored)
        checksum.append(time.perf_counter() - start)
    return data.nbytes / len(encoded), data.nbytes / min(encode), data.nbytes / min(decode), min(checksum) / min(decode)


def main():
    print(f"{'array':28} {'dtype':8} {'MiB':>6} {'codec':16} {'ratio':>6} {'enc MB/s':>9} {'dec MB/s':>9} "
          f"{'ratio/zstd':>10} {'dec/zstd':>9} {'crc/dec':>8}")
    for name, data in arrays().items():
        data = np.ascontiguousarray(data)
        zstd = None
        for codec_name, codec in CODECS.items():
            ratio, enc, dec, crc = measure(codec, data)
            zstd = zstd or (ratio, dec)
            print(f"{name:28} {str(data.dtype):8} {data.nbytes / 2**20:6.1f} {codec_name:16} {ratio:6.2f} "
                  f"{enc / 1e6:9.0f} {dec / 1e6:9.0f} {ratio / zstd[0]:10.2f} {dec / zstd[1]:9.2f} {crc:8.3f}")


if __name__ == "__main__":
    main()
