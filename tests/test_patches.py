import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.patches import positions_to_encode, write_patches
from pipeline.stores import open_cube
from pipeline.synthetic import write_synthetic
from pipeline.windows import WindowSpec


def test_points_mode_centres_windows_on_atom_columns(lattice_cube, tmp_path):
    write_patches(lattice_cube, tmp_path / "p.zarr", mode="points", window=24, progress=False)
    store = xr.open_zarr(tmp_path / "p.zarr")
    patches = store["patches"]
    assert patches.dims == ("sample", "channel", "py", "px") and patches.shape[1:] == (1, 24, 24)
    assert patches.encoding["chunks"][1:] == (1, 24, 24)
    values = WindowSpec.from_attrs(store.attrs).normalise(patches.values)
    assert values.min() == pytest.approx(0) and values.max() == pytest.approx(1)
    # an atom column sits at every window's centre: the centre is brighter than the window's mean
    centre = values[:, 0, 11:13, 11:13].mean(axis=(1, 2))
    assert np.mean(centre > values.mean(axis=(1, 2, 3)) + 0.2) > 0.95
    spacing = 10.0
    expected = 224**2 * 2 / (np.sqrt(3) * spacing**2)  # hexagonal lattice density x area
    assert 0.6 * expected < len(positions_to_encode(store)) <= 1.05 * expected
    assert store.attrs["window_spec_mode"] == "points" and store["y"].attrs["units"] == "nm"
    # the stored samples are the cube's own intensities, cut around each position
    cube = open_cube(lattice_cube).values
    row, col = (int(round(v)) for v in (store["row"].values[0], store["col"].values[0]))
    np.testing.assert_allclose(patches.values[0, 0], cube[row - 12:row + 12, col - 12:col + 12], atol=1e-6)


def test_dark_columns_are_found_as_minima_and_normalised_bright(lattice_cube, tmp_path):
    """The lattice in annular bright field contrast (columns dark on bright): the defaults find
    the same columns as in the bright image, from the intensities' skew, and hand the rVAE the
    windows inverted, so both contrasts give the same samples."""
    from pipeline.ingest import ingest

    bright = open_cube(lattice_cube).values.astype(np.float32)
    np.save(tmp_path / "dark.npy", bright.max() - bright)
    ingest(tmp_path / "dark.npy", tmp_path / "dark.zarr", progress=False, log=lambda line: None)
    found = {}
    for name, cube in (("bright", lattice_cube), ("dark", tmp_path / "dark.zarr")):
        store = write_patches(cube, tmp_path / f"{name}-patches.zarr", mode="points", window=24, progress=False,
                              log=lambda line: None)
        assert store.attrs["columns_polarity"] == name and store.attrs["columns_choice"].split()[1] == name
        found[name] = store
    np.testing.assert_allclose(found["dark"]["position_row"].values, found["bright"]["position_row"].values, atol=1e-6)
    np.testing.assert_allclose(found["dark"]["position_col"].values, found["bright"]["position_col"].values, atol=1e-6)
    samples = {name: WindowSpec.from_attrs(store.attrs).normalise(store["patches"].values)
               for name, store in found.items()}
    np.testing.assert_allclose(samples["dark"], samples["bright"], atol=1e-5)
    # min_distance auto: 0.6 spacings of the lattice the patch stage read (hexagonal planes 8.66 px apart)
    assert "at least 5 px apart" in found["bright"].attrs["columns_choice"]


def test_grid_mode_with_logfft_and_a_bounded_stack(lattice_cube, tmp_path):
    ds = write_patches(lattice_cube, tmp_path / "p.zarr", mode="grid", window=32, stride=16,
                       transform="logfft", max_samples=50, seed=3, progress=False)
    assert ds.sizes["sample"] == 50 and len(positions_to_encode(ds)) == 13 * 13
    assert ds.attrs["grid_shape"] == [13, 13]
    again = write_patches(lattice_cube, tmp_path / "q.zarr", mode="grid", window=32, stride=16,
                          transform="logfft", max_samples=50, seed=3, progress=False)
    np.testing.assert_array_equal(ds["row"].values, again["row"].values)  # reproducible by seed


def test_frames_mode_takes_every_diffraction_pattern(diffraction_cube, tmp_path):
    ds = write_patches(diffraction_cube, tmp_path / "p.zarr", mode="frames", binning=2, progress=False)
    assert ds.sizes["sample"] == 16 * 16 and ds["patches"].shape[1:] == (1, 16, 16)
    cube = open_cube(diffraction_cube).values
    r, c = int(ds["row"].values[5]), int(ds["col"].values[5])
    binned = cube[r, c].reshape(16, 2, 16, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(ds["patches"].values[5, 0], binned, rtol=1e-5, atol=1e-5)


def test_bad_inputs_leave_existing_outputs_untouched(lattice_cube, diffraction_cube, tmp_path, snapshot):
    out = tmp_path / "p.zarr"
    write_patches(lattice_cube, out, window=16, max_samples=10, progress=False)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_patches(lattice_cube, out, window=16)
    with pytest.raises(ValueError, match=r"window 400 px is larger than the image \(224 x 224 px\)"):
        write_patches(lattice_cube, out, window=400, overwrite=True)
    with pytest.raises(ValueError, match=r"mode 'points' needs a cube with dims \('y', 'x'\).*use --mode frames"):
        write_patches(diffraction_cube, out, mode="points", overwrite=True)
    with pytest.raises(FileNotFoundError, match="no cube at"):
        write_patches(tmp_path / "absent.zarr", out, overwrite=True)
    with pytest.raises(ValueError, match="no variable 'counts'"):
        write_patches(lattice_cube, out, variable="counts", overwrite=True)
    assert snapshot(out) == before


def test_nan_in_the_cube_is_refused(tmp_path):
    ds = write_synthetic(tmp_path / "cube.zarr", size=64)
    ds["data"][10, 10] = np.nan
    ds.to_zarr(tmp_path / "nan.zarr", zarr_format=3)
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        write_patches(tmp_path / "nan.zarr", tmp_path / "p.zarr", window=16)
    assert not (tmp_path / "p.zarr").exists()


def test_points_mode_from_a_csv_of_physical_coordinates(lattice_cube, tmp_path, rvae):
    found = write_patches(lattice_cube, tmp_path / "found.zarr", mode="points", window=16, max_samples=None,
                          progress=False)
    picked = found.isel(sample=slice(0, 40))
    lines = ["y,x"] + [f"{y:.17g},{x:.17g}" for y, x in zip(picked["y"].values, picked["x"].values)]
    (tmp_path / "points.csv").write_text("\n".join(lines) + "\n")
    given = write_patches(lattice_cube, tmp_path / "given.zarr", mode="points", window=16,
                          points=tmp_path / "points.csv", progress=False)
    assert given.sizes["sample"] == len(positions_to_encode(given)) == 40
    order = np.lexsort((picked["col"].values, picked["row"].values))
    again = np.lexsort((given["col"].values, given["row"].values))
    np.testing.assert_allclose(given["row"].values[again], picked["row"].values[order], atol=1e-6)
    np.testing.assert_array_equal(given["patches"].values[again], picked["patches"].values[order])
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    result = rvae("patches", lattice_cube, tmp_path / "p.zarr", "--points", tmp_path / "bad.csv")
    assert result.returncode == 1 and "needs columns 'row,col' (pixels) or 'y,x'" in result.stderr
    assert not (tmp_path / "p.zarr").exists()


def test_every_grid_position_is_cut_chunk_by_chunk_from_an_implicit_grid(tmp_path):
    image = np.random.default_rng(0).integers(0, 4000, (150, 131)).astype(np.uint16)
    cube = xr.Dataset({"data": (("y", "x"), image)}, coords={"y": np.arange(150) * 0.5, "x": np.arange(131) * 0.5})
    cube.chunk({"y": 40, "x": 50}).to_zarr(tmp_path / "cube.zarr", zarr_format=3)
    ds = write_patches(tmp_path / "cube.zarr", tmp_path / "p.zarr", mode="grid", window=12, stride=7,
                       max_samples=None, progress=False)
    grid = positions_to_encode(ds)
    assert grid.shape == (20, 18) and "position_row" not in ds  # the grid is kept as attrs, not listed
    rows, cols = ds["row"].values.astype(int), ds["col"].values.astype(int)
    assert sorted(zip(rows, cols)) == sorted(map(tuple, np.asarray(grid)))
    patches = ds["patches"].values
    assert patches.dtype == np.uint16
    compressor, checksum = zarr.open_array(str(tmp_path / "p.zarr" / "patches"), mode="r").compressors
    assert compressor.shuffle.value == "bitshuffle"  # counts: Blosc LZ4 with bit shuffle
    assert isinstance(checksum, zarr.codecs.Crc32cCodec)  # every chunk checked when read
    for i in range(0, len(rows), 17):
        np.testing.assert_array_equal(patches[i, 0], image[rows[i] - 6:rows[i] + 6, cols[i] - 6:cols[i] + 6])
    np.testing.assert_allclose(ds["y"].values, rows * 0.5)
    # samples come cube chunk by cube chunk: the chunk holding each window's first pixel never returns
    tiles = ((rows - 6) // 40) * 10 + (cols - 6) // 50
    changes = np.flatnonzero(np.diff(tiles)) + 1
    assert len(set(tiles[np.r_[0, changes]])) == len(changes) + 1
