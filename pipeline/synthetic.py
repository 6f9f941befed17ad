"""Embedded default data with known ground truth.

* :func:`lattice_grains`: an atomic-resolution image of a hexagonal lattice of Gaussian atom
  columns split into Voronoi grains of known in-plane rotation, with shot noise and scan drift.
* :func:`rotating_diffraction`: a small 4D-STEM cube whose hexagonal diffraction patterns rotate
  with a known orientation map.

Both return an ``xarray.Dataset`` with the signal in ``data`` and the truth in ``true_angle``
(radians, counter-clockwise as displayed) and ``grain``; the lattice symmetry is ``attrs["symmetry"]``.
"""
import numpy as np
import xarray as xr

HEXAGONAL = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # basis vectors (x, y_up), unit spacing


def grain_angles(grains, symmetry, rng):
    """Distinct rotations spread over one symmetry period, in random order."""
    period = 2 * np.pi / symmetry
    base = (np.arange(grains) + rng.uniform(0.2, 0.8, grains)) * period / grains - period / 2
    return rng.permutation(base)


def grain_seeds(grains, size, rng):
    """Voronoi seeds on a jittered grid, so every grain gets a fair share of the field."""
    side = int(np.ceil(np.sqrt(grains)))
    cells = np.stack(np.divmod(rng.permutation(side * side)[:grains], side), -1)
    return (cells + rng.uniform(0.3, 0.7, (grains, 2))) * size / side


def voronoi_labels(shape, seeds):
    """Index of the nearest seed (y, x) for every pixel."""
    yy, xx = np.indices(shape)
    d2 = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return d2.argmin(-1)


def lattice_grains(*, size=384, spacing=10.0, grains=4, dose=200.0, drift=0.0,
                   pixel_size=0.03, seed=0, sigma=None):
    """Hexagonal lattice image with ``grains`` rotated grains. See the module docstring."""
    rng = np.random.default_rng(seed)
    angles = grain_angles(grains, 6, rng)
    labels = voronoi_labels((size, size), grain_seeds(grains, size, rng))
    sigma = spacing / 6 if sigma is None else sigma

    atoms = []
    n = int(np.ceil(size * 1.5 / spacing)) + 2
    ij = np.stack(np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1)), -1).reshape(-1, 2)
    for g, theta in enumerate(angles):
        # Counter-clockwise as displayed: rotate in (x, y_up), then flip y for row coordinates.
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        xy_up = (ij @ HEXAGONAL) @ rot.T * spacing + rng.uniform(0, spacing, 2)
        rows, cols = size / 2 - xy_up[:, 1], size / 2 + xy_up[:, 0]
        inside = (rows > -spacing) & (rows < size + spacing) & (cols > -spacing) & (cols < size + spacing)
        rows, cols = rows[inside], cols[inside]
        owner = labels[np.clip(rows.round().astype(int), 0, size - 1), np.clip(cols.round().astype(int), 0, size - 1)]
        atoms.append(np.stack([rows, cols], -1)[owner == g])
    atoms = drop_crowded(atoms, 0.7 * spacing)
    atoms[:, 1] += drift * atoms[:, 0]  # slow-scan drift shears the image along x

    image = render_gaussians((size, size), atoms, sigma)
    image = 0.05 + image / image.max()
    if dose is not None:
        image = rng.poisson(image * dose) / dose

    coords = {"y": ("y", np.arange(size) * pixel_size, {"units": "nm", "long_name": "scan position y"}),
              "x": ("x", np.arange(size) * pixel_size, {"units": "nm", "long_name": "scan position x"})}
    ds = xr.Dataset(
        {"data": (("y", "x"), image.astype(np.float32), {"units": "counts", "long_name": "HAADF intensity"}),
         "true_angle": (("y", "x"), angles[labels].astype(np.float32),
                        {"units": "rad", "long_name": "true lattice rotation (counter-clockwise)"}),
         "grain": (("y", "x"), labels.astype(np.int16), {"long_name": "grain index"})},
        coords=coords,
        attrs={"source": "rvae-hpc synthetic lattice", "symmetry": 6, "spacing_px": spacing,
               "grain_angles_deg": np.degrees(angles).round(3).tolist(), "dose": dose or 0.0,
               "drift": drift, "seed": seed})
    return ds


def drop_crowded(groups, min_distance):
    """Concatenate atom groups, dropping atoms closer than ``min_distance`` to an earlier group's."""
    from scipy.spatial import cKDTree

    kept = groups[0]
    for atoms in groups[1:]:
        distance, _ = cKDTree(kept).query(atoms, distance_upper_bound=min_distance)
        kept = np.concatenate([kept, atoms[np.isinf(distance)]])
    return kept


def render_gaussians(shape, centres, sigma):
    """Sum of isotropic Gaussians at sub-pixel ``centres`` (N, 2) in (row, col)."""
    image = np.zeros(shape, np.float64)
    r = int(np.ceil(4 * sigma))
    offsets = np.arange(-r, r + 1)
    base = np.floor(centres).astype(int)
    rows = base[:, 0, None] + offsets  # (N, k)
    cols = base[:, 1, None] + offsets
    gy = np.exp(-((rows - centres[:, 0, None]) ** 2) / (2 * sigma ** 2))
    gx = np.exp(-((cols - centres[:, 1, None]) ** 2) / (2 * sigma ** 2))
    values = gy[:, :, None] * gx[:, None, :]
    rr = np.broadcast_to(rows[:, :, None], values.shape)
    cc = np.broadcast_to(cols[:, None, :], values.shape)
    keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    np.add.at(image, (rr[keep], cc[keep]), values[keep])
    return image


def rotating_diffraction(*, size=16, detector=32, grains=4, dose=200.0, pixel_size=1.0, seed=0, **_):
    """4D-STEM cube ``(y, x, ky, kx)``: hexagonal spot patterns rotated per grain."""
    rng = np.random.default_rng(seed)
    angles = grain_angles(grains, 6, rng)
    labels = voronoi_labels((size, size), grain_seeds(grains, size, rng))
    radius, centre = detector * 0.25, detector / 2 - 0.5
    phi = np.arange(6) * np.pi / 3
    # first-order spots (bright) and second-order spots at sqrt(3) x radius (weaker), rotated 30 deg
    orders = [(radius, phi, 1.0), (radius * np.sqrt(3), phi + np.pi / 6, 0.4)]
    patterns = []
    for theta in angles:
        spots, weights = [[centre, centre]], [2.0]
        for r, p, w in orders:
            a = p + theta
            spots += list(zip(centre - r * np.sin(a), centre + r * np.cos(a)))
            weights += [w] * len(a)
        img = sum(w * render_gaussians((detector, detector), np.array([s]), 1.0) for s, w in zip(spots, weights))
        patterns.append(img / img.max())
    cube = np.stack(patterns)[labels] + 0.02
    if dose is not None:
        cube = rng.poisson(cube * dose) / dose
    scan = {"units": "nm", "long_name": "scan position"}
    recip = {"units": "px", "long_name": "detector pixel"}
    return xr.Dataset(
        {"data": (("y", "x", "ky", "kx"), cube.astype(np.float32),
                  {"units": "counts", "long_name": "diffracted intensity"}),
         "true_angle": (("y", "x"), angles[labels].astype(np.float32),
                        {"units": "rad", "long_name": "true pattern rotation (counter-clockwise)"}),
         "grain": (("y", "x"), labels.astype(np.int16), {"long_name": "grain index"})},
        coords={"y": ("y", np.arange(size) * pixel_size, {**scan, "long_name": "scan position y"}),
                "x": ("x", np.arange(size) * pixel_size, {**scan, "long_name": "scan position x"}),
                "ky": ("ky", np.arange(detector) - centre, recip),
                "kx": ("kx", np.arange(detector) - centre, recip)},
        attrs={"source": "rvae-hpc synthetic 4D-STEM", "symmetry": 6,
               "grain_angles_deg": np.degrees(angles).round(3).tolist(), "seed": seed})


SYNTH_DEFAULTS = {"lattice": {"size": 384, "spacing": 10.0, "drift": 0.0}, "4dstem": {"size": 16},
                  "spectra": {"size": 64, "channels": 128}}
ONLY = {"spacing": ("lattice",), "drift": ("lattice",), "channels": ("spectra",)}  # the kinds a parameter is for


def write_synthetic(path, *, kind="lattice", overwrite=False, reuse=False, check_only=False, log=print, **params):
    """Generate the embedded dataset and write it as a Zarr v3 cube, block by block (a spectrum
    image is generated lazily: any size). Returns the Dataset.

    ``reuse``: an existing cube made with these same parameters is kept (``rvae run`` continuing).
    ``check_only``: write nothing; return whether ``reuse`` would keep the cube at ``path``.
    """
    import json

    from .compression import cube_codecs
    from .scheduler import compute
    from .stores import open_store, record_chunks, records_match, staged_output
    from .synthetic_spectra import spectrum_image

    make = {"lattice": lattice_grains, "4dstem": rotating_diffraction, "spectra": spectrum_image}[kind]
    given = {key: value for key, value in params.items() if value is not None or key == "dose"}
    wrong = sorted(name for name in given if kind not in ONLY.get(name, (kind,)))
    if wrong:
        raise ValueError(f"synth --kind {kind} has no {' or '.join(wrong)} (only {ONLY[wrong[0]][0]} has); leave "
                         f"{'them' if len(wrong) > 1 else 'it'} out")
    if kind == "4dstem" and given.get("size", 16) > 64:
        raise ValueError(f"synth --kind 4dstem: size {given['size']} is the scan side, at most 64 (every scan "
                         f"position holds a 64 x 64 pattern in memory)")
    params = {**SYNTH_DEFAULTS[kind], **given}
    record = {"synthetic": json.dumps({"kind": kind, **params}, sort_keys=True)}
    if check_only:
        return records_match(path, record)
    if reuse and records_match(path, record):
        log(f"{path}: up to date (made with these parameters), kept")
        return open_store(path, what="cube")
    ds = make(**params)
    ds.attrs.update(record)
    chunks = {"lattice": {"y": 256, "x": 256}, "4dstem": {"y": 16, "x": 16}, "spectra": {"y": 64, "x": 64}}[kind]
    with staged_output(path, overwrite) as staging:
        # through scheduler.compute: after a failed write (a full disk) it returns only once no
        # other chunk write is still running, so none recreates the partial output once removed
        encoding = {"data": {"compressors": cube_codecs(ds["data"].dtype)}}
        compute(ds.chunk(chunks).to_zarr(staging, zarr_format=3, compute=False, encoding=encoding), progress=False)
        record_chunks(staging)
    return ds
