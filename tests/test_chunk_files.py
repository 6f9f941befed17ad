"""Cube chunks read straight from their files (pipeline.chunk_files) against zarr's own reads."""
import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.chunk_files import readable_directly
from pipeline.compression import cube_codecs
from pipeline.patches import write_patches
from pipeline.stores import open_cube, reading


def write_cube(path, data, chunks, shards=None):
    """A cube as ingest writes one: ``data`` in dims y, x[, ky, kx] with the pipeline's codecs."""
    dims = ("y", "x", "ky", "kx")[:data.ndim]
    encoding = {"data": {"compressors": cube_codecs(data.dtype), "chunks": chunks, "shards": shards}}
    xr.Dataset({"data": (dims, data)}).to_zarr(path, zarr_format=3, encoding=encoding)
    return zarr.open_array(path / "data", mode="r")


@pytest.fixture
def counts():
    return np.random.default_rng(0).poisson(50, (37, 29, 6, 5)).astype(np.uint16)


def test_integer_cube_reads_the_same_values_as_zarr_edge_chunks_included(tmp_path, counts):
    array = write_cube(tmp_path / "c.zarr", counts, (16, 8, 6, 5))  # 37 x 29: partial chunks on both edges
    assert readable_directly(array)
    cube = open_cube(tmp_path / "c.zarr")
    assert cube.data.chunks[:2] == ((16, 16, 5), (8, 8, 8, 5))
    np.testing.assert_array_equal(cube.values, counts)
    np.testing.assert_array_equal(cube[30:, 20:, 2].values, array[30:, 20:, 2])


@pytest.mark.parametrize("dtype, shards", [(np.float32, None), (np.uint16, (32, 16, 6, 5))])
def test_other_codecs_and_sharded_cubes_are_read_through_zarr(tmp_path, counts, dtype, shards):
    array = write_cube(tmp_path / "c.zarr", counts[:32, :16].astype(dtype), (16, 8, 6, 5), shards)
    assert not readable_directly(array)
    np.testing.assert_array_equal(open_cube(tmp_path / "c.zarr").values, counts[:32, :16])


@pytest.mark.filterwarnings("ignore:saving variable")  # floats stored as integers, on purpose
@pytest.mark.parametrize("encoding", [{"scale_factor": 0.5}, {"_FillValue": 7}])
def test_values_that_xarray_decodes_are_left_to_xarray(tmp_path, counts, encoding):
    values = counts[:32, :16].astype(np.float32)
    encoding = {"dtype": "uint16", "compressors": cube_codecs(np.uint16), "chunks": (16, 8, 6, 5), **encoding}
    xr.Dataset({"data": (("y", "x", "ky", "kx"), values)}).to_zarr(tmp_path / "c.zarr", zarr_format=3,
                                                                   encoding={"data": encoding})
    assert readable_directly(zarr.open_array(tmp_path / "c.zarr" / "data", mode="r"))
    expected = xr.open_zarr(tmp_path / "c.zarr")["data"].values
    assert expected.dtype.kind == "f"
    np.testing.assert_array_equal(open_cube(tmp_path / "c.zarr").values, expected)


def test_a_chunk_never_written_reads_as_fill_value(tmp_path, counts):
    write_cube(tmp_path / "c.zarr", counts, (16, 8, 6, 5))
    (tmp_path / "c.zarr" / "data" / "c" / "1" / "2" / "0" / "0").unlink()
    values = open_cube(tmp_path / "c.zarr").values
    assert (values[16:32, 16:24] == 0).all()
    np.testing.assert_array_equal(values[:16], counts[:16])


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2], lambda b: b[:10],
                                    lambda b: b[:16] + b"\0" * (len(b) - 16)])  # header intact, body not
def test_a_truncated_or_corrupt_chunk_is_one_error_naming_the_file(tmp_path, counts, damage):
    write_cube(tmp_path / "c.zarr", counts, (16, 8, 6, 5))
    chunk = tmp_path / "c.zarr" / "data" / "c" / "0" / "1" / "0" / "0"
    chunk.write_bytes(damage(chunk.read_bytes()))
    with pytest.raises(ValueError, match="cannot read cube .*corrupt or truncated") as error:
        with reading(tmp_path / "c.zarr"):
            open_cube(tmp_path / "c.zarr").values
    assert str(chunk) in str(error.value)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        write_patches(tmp_path / "c.zarr", tmp_path / "p.zarr", mode="frames", progress=False)
    assert not (tmp_path / "p.zarr").exists()
