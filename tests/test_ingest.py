from functools import partial

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr

from pipeline.ingest import CHUNK_BYTES, _MappedFile, cube_chunks, ingest, label, read_source


def write_source(kind, path, data):
    if kind == "npy":
        np.save(path, data)
    elif kind == "tiff":
        tifffile.imwrite(path, data)
    elif kind == "h5":
        with h5py.File(path, "w") as f:
            f.create_dataset("entry/instrument/data", data=data, chunks=True)
            f["entry/instrument/data"].attrs["voltage_kV"] = 300
    elif kind == "zarr":
        zarr.save_array(str(path), data)
    elif kind == "zarr2":
        zarr.save_array(str(path), data, zarr_format=2)
    return path


@pytest.mark.parametrize("kind", ["npy", "tiff", "h5", "zarr", "zarr2"])
def test_ingest_round_trip_names_dims_and_keeps_values(tmp_path, kind):
    data = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    source = write_source(kind, tmp_path / f"image.{kind.rstrip('2')}", data)
    ingest(source, tmp_path / "cube.zarr", pixel_size=0.05, units="nm", progress=False)
    cube = xr.open_zarr(tmp_path / "cube.zarr")
    assert cube["data"].dims == ("y", "x")
    np.testing.assert_array_equal(cube["data"].values, data)
    assert cube["x"].attrs["units"] == "nm" and cube["x"].values[1] == pytest.approx(0.05)
    assert "original_metadata" in cube.attrs


def test_ingest_4d_hdf5_keeps_signal_axes_whole_and_metadata(tmp_path):
    data = np.random.default_rng(1).random((6, 7, 16, 16))
    source = write_source("h5", tmp_path / "scan.h5", data)
    ingest(source, tmp_path / "cube.zarr", progress=False)
    cube = xr.open_zarr(tmp_path / "cube.zarr")
    assert cube["data"].dims == ("y", "x", "ky", "kx")
    assert cube["data"].encoding["chunks"][2:] == (16, 16)
    assert '"voltage_kV": 300' in cube.attrs["original_metadata"]


@pytest.mark.parametrize("dtype, codec", [(np.uint16, "BloscCodec"), (np.int32, "BloscCodec"),
                                          (np.float32, "ZstdCodec")])
def test_counts_are_compressed_with_bitshuffle_lz4_and_floats_with_zstd(tmp_path, dtype, codec):
    data = np.random.default_rng(2).poisson(30, (64, 48)).astype(dtype)
    ingest(write_source("npy", tmp_path / "counts.npy", data), tmp_path / "cube.zarr", progress=False)
    compressor, checksum = zarr.open_array(str(tmp_path / "cube.zarr" / "data"), mode="r").compressors
    assert type(compressor).__name__ == codec and type(checksum).__name__ == "Crc32cCodec"
    if codec == "BloscCodec":
        assert (compressor.cname.value, compressor.shuffle.value) == ("lz4", "bitshuffle")
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "cube.zarr")["data"].values, data)


def read_tasks_only(data):
    """Whether the cube's graph is only reads: no rechunk merging or splitting pieces."""
    return not any(name.startswith("rechunk") for name in data.dask.layers)


@pytest.mark.parametrize("kind", ["npy", "tif"])
@pytest.mark.parametrize("shape", [(65536, 65536), (512, 512, 128, 128)])
def test_a_large_uncompressed_file_is_read_straight_in_cube_chunks(tmp_path, shape, kind):
    # 8 GiB on paper, a sparse file on disk: nothing is read. The TIFF is one strip: its own
    # chunking (through tifffile's zarr store) would be a single 8 GiB chunk.
    if kind == "npy":
        np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint16, shape=shape)
    else:
        tifffile.memmap(tmp_path / "big.tif", shape=shape, dtype=np.uint16)  # writes the header, maps the rest
    data = label(read_source(tmp_path / f"big.{kind}"))["data"].data
    assert np.prod(data.chunksize) * 2 <= CHUNK_BYTES
    assert data.chunksize[2:] == shape[2:]  # whole frames: each read is runs of whole frames
    assert read_tasks_only(data)


def test_a_tiff_stack_is_read_in_whole_pages(tmp_path):
    tifffile.memmap(tmp_path / "stack.tif", shape=(512, 2048, 2048), dtype=np.uint16)  # 4 GiB, sparse
    data = label(read_source(tmp_path / "stack.tif"), dims=("frame", "y", "x"))["data"].data
    assert data.chunksize[1:] == (2048, 2048)  # whole frames: each read is one run of the file
    assert read_tasks_only(data)


def test_hdf5_is_read_in_whole_multiples_of_its_own_chunks(tmp_path):
    # a detector's layout, a few frames per chunk: 5.6 GB on paper, no chunk written
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("entry/data/data", shape=(300, 300, 128, 128), dtype=np.uint16, chunks=(3, 5, 128, 128))
    data = label(read_source(tmp_path / "scan.h5"))["data"].data
    assert CHUNK_BYTES / 2 < np.prod(data.chunksize) * 2 <= CHUNK_BYTES  # 64 file chunks or more a read
    assert all(c % f == 0 for c, f in zip(data.chunksize, (3, 5, 128, 128)))
    assert read_tasks_only(data)


@pytest.mark.parametrize("compression", ["Bitshuffle", "Blosc", "Zstd"])
def test_detector_hdf5_with_plugin_compression_ingests(tmp_path, rvae, compression):
    import hdf5plugin

    data = np.random.default_rng(4).poisson(20, (6, 7, 32, 32)).astype(np.uint16)
    with h5py.File(tmp_path / "scan.h5", "w") as f:  # as Dectris detectors write them (Bitshuffle-LZ4)
        f.create_dataset("entry/data/data", data=data, chunks=(1, 1, 32, 32), **getattr(hdf5plugin, compression)())
    # a fresh interpreter: the reader must register the filter itself, this test's import does not count
    made = rvae("ingest", tmp_path / "scan.h5", tmp_path / "cube.zarr")
    assert made.returncode == 0, made.stderr
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "cube.zarr")["data"].values, data)


def mapped_npy(path):
    return _MappedFile(path, partial(np.load, path, mmap_mode="r"))


@pytest.mark.parametrize("shape", [(37, 53), (5, 7, 9, 11)])
def test_pieces_read_by_position_match_numpy(tmp_path, shape):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 60000, shape).astype(np.uint16)
    np.save(tmp_path / "a.npy", data)
    npy = mapped_npy(tmp_path / "a.npy")
    keys = [tuple(slice(0, n) for n in shape), tuple(slice(1, n) for n in shape)]  # whole; one long run each row
    keys += [tuple(slice(*sorted(rng.integers(0, n + 1, 2))) for n in shape) for _ in range(50)]
    for key in keys:
        np.testing.assert_array_equal(npy[key], data[key])
    image = data.reshape(-1, shape[-1])
    tifffile.imwrite(tmp_path / "a.tif", image, byteorder=">")  # big-endian
    np.testing.assert_array_equal(read_source(tmp_path / "a.tif").data[2:30, 1:9], image[2:30, 1:9])
    np.save(tmp_path / "f.npy", np.asfortranarray(data))  # not C order: read through a memory map
    np.testing.assert_array_equal(mapped_npy(tmp_path / "f.npy")[1:3, 2:4], data[1:3, 2:4])


def test_chunks_are_about_32_mb_with_signal_axes_whole():
    chunks = cube_chunks(("y", "x", "ky", "kx"), (1024, 1024, 256, 256), np.float32)
    assert chunks[2:] == (256, 256)
    size = np.prod(chunks) * 4
    assert 1e6 < size <= 100e6


def test_a_sharded_cube_keeps_every_value_in_fewer_files(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.ingest.CHUNK_BYTES", 2**14)  # chunks of 90 x 90: 4 x 3 of them
    data = np.random.default_rng(5).integers(0, 60000, (300, 200)).astype(np.uint16)
    np.save(tmp_path / "image.npy", data)
    ingest(tmp_path / "image.npy", tmp_path / "cube.zarr", shard=2, progress=False)
    array = zarr.open_array(str(tmp_path / "cube.zarr" / "data"), mode="r")
    assert array.shards == tuple(2 * c for c in array.chunks)
    assert len([p for p in (tmp_path / "cube.zarr" / "data").rglob("c/*/*") if p.is_file()]) == 2 * 2
    cube = xr.open_zarr(tmp_path / "cube.zarr")["data"]
    np.testing.assert_array_equal(cube.values, data)  # no write of part of a shard dropped the rest
    assert cube.data.chunksize == array.chunks  # later stages still read chunk by chunk


def test_ingest_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no source file"):
        ingest(tmp_path / "absent.npy", tmp_path / "c.zarr")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(ValueError, match=r"unknown format '.xyz'"):
        ingest(tmp_path / "x.xyz", tmp_path / "c.zarr")
    np.save(tmp_path / "stack.npy", np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="3-D data needs --dims"):
        ingest(tmp_path / "stack.npy", tmp_path / "c.zarr")
    np.save(tmp_path / "complex.npy", np.zeros((8, 8), complex))
    with pytest.raises(TypeError, match="real numbers"):
        ingest(tmp_path / "complex.npy", tmp_path / "c.zarr")
    source = write_source("h5", tmp_path / "t.h5", np.zeros((64, 64)))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(source.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cannot read"):
        ingest(truncated, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("kind, compression", [("npy", None), ("tiff", None), ("tiff", "zlib")])
def test_a_truncated_file_is_refused_naming_it(tmp_path, kind, compression):
    data = np.random.default_rng(6).integers(0, 1000, (10, 64, 64)).astype(np.uint16)
    whole = tmp_path / f"whole.{kind}"
    if kind == "npy":
        np.save(whole, data)
    else:  # compressed and cut short, tifffile would read it as its first page alone
        tifffile.imwrite(whole, data, compression=compression)
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"cut.{kind}"):
        ingest(cut, tmp_path / "c.zarr", dims="frame,y,x")
    assert not (tmp_path / "c.zarr").exists()


def test_ingest_with_dims_for_an_image_stack(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((3, 8, 9), np.float32))
    ds = ingest(tmp_path / "stack.npy", tmp_path / "c.zarr", dims="frame,y,x", progress=False)
    assert ds["data"].dims == ("frame", "y", "x")


# Real vendor files (the real_file fixture): hyperspy 1.7.6's Bruker EDS spectrum image and atomap's
# ADF STEM image.
def test_bruker_eds_spectrum_image_matches_rosettasciio(tmp_path, real_file):
    from rsciio.bruker import file_reader

    source = real_file("bcf_v2_50x50px.bcf")
    ingest(source, tmp_path / "eds.zarr", dataset="EDX", progress=False)
    cube = xr.open_zarr(tmp_path / "eds.zarr")
    reference = next(s for s in file_reader(str(source)) if s["data"].ndim == 3)
    assert cube["data"].dims == ("y", "x", "energy")
    np.testing.assert_array_equal(cube["data"].values, reference["data"])
    energy = reference["axes"][2]
    assert cube["energy"].attrs["units"] == energy["units"] == "keV"
    np.testing.assert_allclose(cube["energy"].values, energy["offset"] + energy["scale"] * np.arange(energy["size"]))
    assert cube["x"].attrs["units"] == reference["axes"][1]["units"]
    assert cube["x"].values[1] == pytest.approx(reference["axes"][1]["scale"])
    assert "EDS_SEM" in cube.attrs["original_metadata"]


def test_file_with_several_signals_asks_which(tmp_path, real_file):
    with pytest.raises(ValueError, match=r"holds 3 signals .*2 = EDX \(50, 50, 2048\)\); pick one with --dataset"):
        ingest(real_file("bcf_v2_50x50px.bcf"), tmp_path / "eds.zarr", progress=False)
    assert not (tmp_path / "eds.zarr").exists()


def test_hyperspy_adf_image_matches_rosettasciio_and_yields_atom_columns(tmp_path, real_file):
    from rsciio.hspy import file_reader

    from pipeline.patches import write_patches

    source = real_file("test_ADF_cropped.hdf5")
    ingest(source, tmp_path / "adf.zarr", progress=False)
    cube = xr.open_zarr(tmp_path / "adf.zarr")
    reference = file_reader(str(source))[0]
    assert cube["data"].dims == ("y", "x") and cube["data"].dtype == np.float16
    np.testing.assert_array_equal(cube["data"].values, reference["data"])
    assert cube["y"].values[1] == pytest.approx(reference["axes"][0]["scale"])
    patches = write_patches(tmp_path / "adf.zarr", tmp_path / "p.zarr", mode="points", window=16, progress=False)
    # The bright columns of a real perovskite, one per cell (min_distance auto: 0.6 lattice spacings;
    # a cell is ~29 x 43 px, so ~120 in the image): a regular lattice, so nearest neighbours agree.
    centres = np.stack([patches["row"].values, patches["col"].values], axis=1)
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    nearest = np.sort(distances, axis=1)[:, 1]
    assert 100 < len(centres) < 140 and patches.attrs["columns_polarity"] == "bright"
    assert np.mean(np.abs(nearest / np.median(nearest) - 1) < 0.1) > 0.9


def test_spectrum_image_channels_are_energy_band_sums(tmp_path, rvae, real_file):
    ingest(real_file("bcf_v2_50x50px.bcf"), tmp_path / "eds.zarr", dataset="EDX", progress=False)
    cube = xr.open_zarr(tmp_path / "eds.zarr")["data"]
    result = rvae("patches", tmp_path / "eds.zarr", tmp_path / "p.zarr", "--mode", "grid", "--window", "16",
                  "--stride", "4", "--channels", "0.2:2,2:20")
    assert result.returncode == 0, result.stderr
    patches = xr.open_zarr(tmp_path / "p.zarr")
    assert patches["patches"].shape[1:] == (2, 16, 16)
    for i, (lo, hi) in enumerate([(0.2, 2), (2, 20)]):
        band = cube.sel(energy=slice(lo, hi)).sum("energy").values
        r, c = int(patches["row"][3]) - 8, int(patches["col"][3]) - 8
        np.testing.assert_allclose(patches["patches"].values[3, i], band[r:r + 16, c:c + 16])
    refused = rvae("patches", tmp_path / "eds.zarr", tmp_path / "q.zarr", "--mode", "grid", "--window", "16")
    assert refused.returncode == 1 and "needs --channels" in refused.stderr
    assert not (tmp_path / "q.zarr").exists()


def test_detector_axes_are_calibrated_at_ingest(rvae, tmp_path):
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).poisson(5, (4, 4, 8, 8)).astype(np.uint16))
    done = rvae("ingest", tmp_path / "scan.npy", tmp_path / "cube.zarr", "--signal-pixel-size", "0.5",
                "--signal-units", "mrad", "--pixel-size", "2", "--units", "nm")
    assert done.returncode == 0, done.stderr
    cube = xr.open_zarr(tmp_path / "cube.zarr")
    np.testing.assert_allclose(cube["kx"].values, (np.arange(8) - 4) * 0.5)  # centred on the pattern
    assert cube["ky"].attrs == {"units": "mrad", "long_name": "detector position ky"}
    assert cube["x"].attrs["units"] == "nm" and cube["x"].values[1] == 2
    assert cube["data"].attrs["long_name"] == "detector counts" and cube["data"].attrs["units"] == "counts"


@pytest.mark.parametrize("name, shape, spectrum, decided", [
    # rosettasciio marks this Gatan EELS SI's energy axis as navigation: its units say what it is
    ("EELS_SI.dm4", (2, 2, 2048), ("eV", "Energy loss"), "'Energy loss' (2048, eV) is the spectrum (by its units)"),
    # a cathodoluminescence line scan: 67 positions along x, a wavelength spectrum at each
    ("test-MonoCL_spectrum-SI.dm4", (1, 67, 1336), ("nm", "Wavelength"), "a line scan: y has one position"),
])
def test_spectrum_images_are_ingested_as_such(tmp_path, real_file, name, shape, spectrum, decided):
    lines = []
    ds = ingest(real_file(name), tmp_path / "si.zarr", progress=False, log=lines.append)
    assert ds["data"].dims == ("y", "x", "energy") and ds["data"].shape == shape
    assert (ds["energy"].attrs["units"], ds["energy"].attrs["long_name"]) == spectrum
    assert ds["x"].attrs["units"] == "µm" and float(ds["x"][1] - ds["x"][0]) > 0
    assert any(decided in line for line in lines), lines
    from rsciio.digitalmicrograph import file_reader

    original = np.asarray(file_reader(str(real_file(name)))[0]["data"])
    stored = xr.open_zarr(tmp_path / "si.zarr")["data"].values
    expected = original.transpose(1, 2, 0) if name.startswith("EELS") else original[None]  # the spectrum last
    np.testing.assert_array_equal(stored, expected)
