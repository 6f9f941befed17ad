import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr

from pipeline.ingest import cube_chunks, ingest


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
    return path


@pytest.mark.parametrize("kind", ["npy", "tiff", "h5", "zarr"])
def test_ingest_round_trip_names_dims_and_keeps_values(tmp_path, kind):
    data = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    source = write_source(kind, tmp_path / f"image.{kind}", data)
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


def test_chunks_are_about_32_mb_with_signal_axes_whole():
    chunks = cube_chunks(("y", "x", "ky", "kx"), (1024, 1024, 256, 256), 4)
    assert chunks[2:] == (256, 256)
    size = np.prod(chunks) * 4
    assert 1e6 < size <= 100e6


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


def test_ingest_with_dims_for_an_image_stack(tmp_path):
    np.save(tmp_path / "stack.npy", np.zeros((3, 8, 9), np.float32))
    ds = ingest(tmp_path / "stack.npy", tmp_path / "c.zarr", dims="frame,y,x", progress=False)
    assert ds["data"].dims == ("frame", "y", "x")
