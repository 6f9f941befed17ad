"""Benchmark images of real crystal structures: four grains per image, each turned by a known angle
and each with content of its own, rendered as incoherent HAADF or ABF-like STEM at a realistic dose.

Structures come from ASE (``ase.build``: 2H-MoS2, WSe2, MoSe2, graphene, hBN monolayers; bulk Si,
GaAs and Cu seen along [110]; SrTiO3 built from its perovskite cell, seen along [001]). A grain is a slab of
its crystal, turned about the beam, with its own dopants (a fraction of one element's sites given
another element), vacancies, thickness, or material; atoms are projected along the beam.

Contrast (the incoherent model, no multislice): HAADF sums ``Z ** 1.7`` of the atoms in a column,
ABF-like subtracts ``Z ** 0.5`` from a bright background; the sums are splatted bilinearly onto the
pixel grid and blurred by a Gaussian probe. Scan distortions: a slow drift (a shear) and a random
jitter of each scan line along x. Noise: Poisson at ``dose`` electrons per pixel of full intensity.

Each case returns the image, the true angle and the grain of every pixel, the projected sites with
their label (1 where a site differs from its host crystal: a dopant or a vacancy's column), and the
crystal's rotational symmetry in real space (what angles are defined modulo).
"""
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

SIZE = 512  # px; four 256-px grains
PIXEL = 0.2  # Angstrom per pixel
ANGLES = (0.0, 11.0, -17.0, 26.0)  # degrees, counter-clockwise as displayed, one per grain


@dataclass(frozen=True)
class Grain:
    """One grain's content: ``material`` (a key of :data:`MATERIALS`), ``dopant`` ``(host element,
    new element, fraction)``, ``vacancies`` ``(element, fraction)``, slab ``thickness`` (Angstrom,
    bulk crystals) or ``layers`` (2-D materials)."""
    material: str
    dopant: tuple = None
    vacancies: tuple = None
    thickness: float = 60.0
    layers: int = 1


@dataclass(frozen=True)
class Case:
    name: str
    grains: tuple
    symmetry: int  # the rotational symmetry of the projected crystal about a column, in real space
    contrast: str = "HAADF"
    dose: float = 300.0
    probe: float = 0.35  # Gaussian probe sigma, Angstrom
    jitter: float = 0.15  # px of random x offset per scan line
    drift: float = 0.002  # px of x offset per scan line (a shear)
    notes: str = field(default="", compare=False)


def _perovskite(a=3.905, a_site="Sr", b_site="Ti"):
    from ase import Atoms

    return Atoms([a_site, b_site, "O", "O", "O"], cell=[a, a, a], pbc=True,
                 scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)])


def _material(name):
    """``(atoms, zone axis or None for a 2-D sheet)`` of a named structure."""
    from ase.build import bulk, graphene, mx2

    if name in ("MoS2", "WSe2", "MoSe2"):
        a = {"MoS2": 3.16, "WSe2": 3.28, "MoSe2": 3.29}[name]
        return mx2(name, kind="2H", a=a, thickness=3.19, size=(1, 1, 1), vacuum=None), None
    if name == "graphene":
        return graphene("C2", a=2.46), None
    if name == "hBN":
        return graphene("BN", a=2.50), None
    if name == "SrTiO3":
        return _perovskite(), (0, 0, 1)
    if name == "Si":
        return bulk("Si", "diamond", a=5.431, cubic=True), (1, 1, 0)
    if name == "GaAs":
        return bulk("GaAs", "zincblende", a=5.653, cubic=True), (1, 1, 0)
    if name == "Cu":
        return bulk("Cu", "fcc", a=3.615, cubic=True), (1, 1, 0)
    raise ValueError(f"unknown material {name!r}")


MATERIALS = ("MoS2", "WSe2", "MoSe2", "graphene", "hBN", "SrTiO3", "Si", "GaAs", "Cu")


def projected_sites(grain, angle, extent, rng):
    """Projected atoms of one grain turned by ``angle`` (radians, counter-clockwise as displayed)
    over a square field of side ``extent`` (Angstrom) centred on a column: ``(x, y_up, Z, changed)``."""
    from ase.data import atomic_numbers

    atoms, zone = _material(grain.material)
    cell = np.array(atoms.cell)
    reach = extent * 0.75 + 10
    if zone is None:  # a sheet: repeat in plane, stack layers (2H: every other layer turned by 180 deg)
        step = min(np.linalg.norm(cell[0]), np.linalg.norm(cell[1]))
        n = int(reach / step) + 2
        i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
        origins = i.reshape(-1, 1) * cell[0] + j.reshape(-1, 1) * cell[1]
        positions, numbers = [], []
        for layer in range(grain.layers):
            base = atoms.positions.copy()
            if layer % 2:  # 2H stacking: the next layer is the first turned by 180 degrees about a metal column
                base[:, :2] = -base[:, :2] + atoms.positions[1, :2]
            positions.append((origins[:, None, :] + base[None]).reshape(-1, 3))
            numbers.append(np.tile(atoms.numbers, len(origins)))
        xyz, numbers = np.concatenate(positions), np.concatenate(numbers)
    else:
        step = min(np.linalg.norm(c) for c in cell)
        n = int(math.hypot(reach, grain.thickness) / step) + 2
        r = np.arange(-n, n + 1)
        i, j, k = np.meshgrid(r, r, r, indexing="ij")
        origins = np.stack([i.ravel(), j.ravel(), k.ravel()], 1) @ cell
        xyz = (origins[:, None, :] + atoms.positions[None]).reshape(-1, 3)
        numbers = np.tile(atoms.numbers, len(origins))
        beam = np.asarray(zone, float) / np.linalg.norm(zone)
        # a frame with the beam along z and x along a lattice direction normal to it
        x_axis = np.cross(beam, [0, 0, 1.0]) if abs(beam[2]) < 0.9 else np.array([1.0, 0, 0])
        x_axis /= np.linalg.norm(x_axis)
        y_axis = np.cross(beam, x_axis)
        xyz = xyz @ np.stack([x_axis, y_axis, beam], 1)
        keep = np.abs(xyz[:, 2]) <= grain.thickness / 2
        xyz, numbers = xyz[keep], numbers[keep]
    keep = (np.abs(xyz[:, 0]) < reach) & (np.abs(xyz[:, 1]) < reach)
    xyz, numbers = xyz[keep], numbers[keep]
    changed = np.zeros(len(numbers), bool)
    if grain.dopant:
        host, new, fraction = grain.dopant
        picked = (numbers == atomic_numbers[host]) & (rng.random(len(numbers)) < fraction)
        numbers = np.where(picked, atomic_numbers[new], numbers)
        changed |= picked
    if grain.vacancies:
        element, fraction = grain.vacancies
        gone = (numbers == atomic_numbers[element]) & (rng.random(len(numbers)) < fraction)
        # a column that lost an atom is changed; mark it on the atoms that stay in it
        lost = xyz[gone, :2]
        xyz, numbers, changed = xyz[~gone], numbers[~gone], changed[~gone]
        if len(lost):
            from scipy.spatial import cKDTree

            near = cKDTree(xyz[:, :2]).query_ball_point(lost, r=0.3)
            for hits in near:
                changed[hits] = True
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    xy = xyz[:, :2] @ turn.T
    return xy[:, 0], xy[:, 1], numbers, changed


def render(case, seed=0, size=SIZE, pixel=PIXEL, angles=ANGLES):
    """``(image, true angle per pixel (radians), grain per pixel, sites)``: ``sites`` holds the
    columns' pixel positions ``(row, col)`` and whether each column was changed (dopant, vacancy)."""
    rng = np.random.default_rng(seed)
    half = size // 2
    image = np.zeros((size, size))
    truth = np.zeros((size, size), np.float32)
    grain_map = np.zeros((size, size), np.int16)
    site_rows, site_cols, site_changed = [], [], []
    jitter = rng.normal(0, case.jitter, size)
    for k, (grain, degrees) in enumerate(zip(case.grains, angles)):
        r, c = divmod(k, 2)
        x, y_up, numbers, changed = projected_sites(grain, math.radians(degrees), half * pixel * 1.5, rng)
        # centred on the grain's quadrant; rows grow downwards
        rows = half / 2 + r * half - y_up / pixel
        cols = half / 2 + c * half + x / pixel
        inside = (rows >= r * half) & (rows < (r + 1) * half) & (cols >= c * half) & (cols < (c + 1) * half)
        rows, cols, numbers, changed = rows[inside], cols[inside], numbers[inside], changed[inside]
        line = np.clip(rows.round().astype(int), 0, size - 1)
        cols = cols + jitter[line] + case.drift * rows  # the scan's distortions move what each line sees
        image += _splat(rows, cols, numbers.astype(float) ** (1.7 if case.contrast == "HAADF" else 0.5), size)
        truth[r * half:(r + 1) * half, c * half:(c + 1) * half] = math.radians(degrees)
        grain_map[r * half:(r + 1) * half, c * half:(c + 1) * half] = k
        columns = _columns(rows, cols, changed)
        site_rows.append(columns[0]), site_cols.append(columns[1]), site_changed.append(columns[2])
    image = ndimage.gaussian_filter(image, case.probe / pixel)
    image /= image.max()
    if case.contrast == "ABF":
        image = 1.0 - 0.6 * image
    counts = rng.poisson(case.dose * image).astype(np.float32)
    sites = {"row": np.concatenate(site_rows), "col": np.concatenate(site_cols),
             "changed": np.concatenate(site_changed)}
    return counts, truth, grain_map, sites


def _splat(rows, cols, weight, size, periodic=False):
    """Point weights deposited bilinearly onto a ``size`` grid (an int, or ``(rows, cols)``);
    ``periodic``: what falls off one edge comes in at the other."""
    ny, nx = (size, size) if np.isscalar(size) else size
    image = np.zeros((ny + 1, nx + 1))
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        if periodic:
            r, c, ok = r % ny, c % nx, np.ones(len(r), bool)
        else:
            ok = (r >= 0) & (c >= 0) & (r <= ny) & (c <= nx)
        np.add.at(image, (r[ok], c[ok]), (weight * w)[ok])
    return image[:ny, :nx]


def incoherent(rows, cols, numbers, shape, probe_px, contrast="HAADF", periodic=False):
    """The incoherent image of atoms at pixel positions: ``Z ** 1.7`` (HAADF) or ``Z ** 0.5`` (ABF,
    subtracted from a bright background) per atom, blurred by a Gaussian probe of ``probe_px``."""
    weight = np.asarray(numbers, float) ** (1.7 if contrast == "HAADF" else 0.5)
    image = ndimage.gaussian_filter(_splat(rows, cols, weight, shape, periodic), probe_px,
                                    mode="wrap" if periodic else "constant")
    return image / image.max() if contrast == "HAADF" else 1.0 - 0.6 * image / image.max()


def _columns(rows, cols, changed, tolerance=0.5):
    """Atoms merged into columns (within ``tolerance`` px): each column's mean position and whether
    any of its atoms changed."""
    key = np.stack([np.round(rows / tolerance), np.round(cols / tolerance)], 1)
    _, index = np.unique(key, axis=0, return_inverse=True)
    index = index.ravel()
    count = np.bincount(index)
    return (np.bincount(index, rows) / count, np.bincount(index, cols) / count,
            np.bincount(index, changed.astype(float)) > 0)


CASES = (
    Case("MoS2 HAADF: vacancies, W and Se dopants", symmetry=3, grains=(
        Grain("MoS2"), Grain("MoS2", vacancies=("S", 0.06)), Grain("MoS2", dopant=("Mo", "W", 0.05)),
        Grain("MoS2", dopant=("S", "Se", 0.1)))),
    # W outshines Se2 but Se2 outshines Mo: windows centre on W in WSe2 and on Se2 in MoSe2, whose
    # bright-column patterns are 60 degrees apart; only turns modulo 60 compare across the two materials
    Case("WSe2 / MoSe2 HAADF: two materials", symmetry=6, grains=(
        Grain("WSe2"), Grain("MoSe2"), Grain("WSe2", vacancies=("Se", 0.05)), Grain("MoSe2", dopant=("Mo", "W", 0.1)))),
    # both sublattices are carbon: a window centres on either, and the two are turned 60 degrees
    # against each other, so graphene's orientation is defined modulo 60 (the hexagon's 6-fold axis)
    Case("graphene HAADF, low dose", symmetry=6, dose=60.0, grains=(
        Grain("graphene"), Grain("graphene", vacancies=("C", 0.02)), Grain("graphene", dopant=("C", "N", 0.03)),
        Grain("graphene", vacancies=("C", 0.04)))),
    Case("hBN HAADF", symmetry=3, grains=(
        Grain("hBN"), Grain("hBN", vacancies=("B", 0.03)), Grain("hBN", dopant=("N", "C", 0.05)), Grain("hBN"))),
    Case("SrTiO3 [001] HAADF: La dopants, thickness", symmetry=4, grains=(
        Grain("SrTiO3", thickness=40), Grain("SrTiO3", dopant=("Sr", "La", 0.03), thickness=40),
        Grain("SrTiO3", thickness=80), Grain("SrTiO3", dopant=("Ti", "Nb", 0.03), thickness=60))),
    Case("SrTiO3 [001] ABF", symmetry=4, contrast="ABF", grains=(
        Grain("SrTiO3", thickness=40), Grain("SrTiO3", thickness=60), Grain("SrTiO3", vacancies=("O", 0.05)),
        Grain("SrTiO3", thickness=50))),
    Case("Si [110] HAADF dumbbells: thickness", symmetry=2, grains=(
        Grain("Si", thickness=40), Grain("Si", thickness=80), Grain("Si", thickness=60),
        Grain("Si", dopant=("Si", "Ge", 0.02), thickness=60))),
    Case("GaAs [110] HAADF", symmetry=2, grains=(
        Grain("GaAs", thickness=50), Grain("GaAs", dopant=("Ga", "In", 0.03), thickness=50),
        Grain("GaAs", thickness=70), Grain("GaAs", thickness=40))),
    Case("Cu [110] HAADF", symmetry=2, grains=(
        Grain("Cu", thickness=40), Grain("Cu", dopant=("Cu", "Au", 0.02), thickness=40),
        Grain("Cu", thickness=60), Grain("Cu", vacancies=("Cu", 0.03), thickness=40))),
)
