"""The incoherent HAADF model of ``lattice_cases.py`` against multislice (abTEM) on small tiles.

For a few structures, a periodic tile is simulated by abTEM's multislice (200 kV, 25 mrad probe,
a 70-200 mrad annular detector, frozen lattice off) and rendered by the incoherent model
(``Z ** 1.7`` per atom, a Gaussian probe) from the same atoms on the same scan grid. Printed per
tile: the Pearson correlation of the two images, the probe width that fits best, and the ratio
of the brightest to the dimmest column sublattice's peak in each (the contrast the rVAE sees).
abTEM costs about a minute a tile on two cores; ``make bench-deps`` installs it.

    python benchmarks/multislice_check.py
"""
import time

import numpy as np
from ase.build import mx2
from lattice_cases import _perovskite, incoherent
from scipy import ndimage

SAMPLING = 0.2  # Angstrom per scan position


def tiles():
    """``{name: atoms}``: periodic, orthogonal tiles a few Angstrom thick."""
    from abtem import orthogonalize_cell
    from ase.build import bulk, surface

    mos2 = orthogonalize_cell(mx2("MoS2", kind="2H", a=3.16, thickness=3.19, size=(1, 1, 1), vacuum=2)) * (3, 2, 1)
    sto = _perovskite() * (3, 3, 5)  # [001], 20 Angstrom
    silicon = surface(bulk("Si", "diamond", a=5.431, cubic=True), (1, 1, 0), 4, periodic=True)  # [110] along z
    for atoms in (mos2, sto, silicon):
        atoms.center(vacuum=2, axis=2)
    return {"2H-MoS2 [001]": mos2, "SrTiO3 [001], 20 A": sto, "Si [110], 4 layers": silicon * (2, 1, 1)}


def multislice(atoms):
    import abtem

    potential = abtem.Potential(atoms, sampling=0.05, projection="infinite", slice_thickness=2)
    probe = abtem.Probe(energy=200e3, semiangle_cutoff=25, sampling=0.05)
    probe.grid.match(potential)
    scan = abtem.GridScan(start=(0, 0), end=potential.extent, sampling=SAMPLING)
    image = probe.scan(potential, scan=scan, detectors=abtem.AnnularDetector(inner=70, outer=200))
    return np.asarray(image.compute(progress_bar=False).array)


def model(atoms, shape, probe):
    """The incoherent image on abTEM's scan grid (x along the first axis, as abTEM's)."""
    x, y = atoms.positions[:, 0] / SAMPLING, atoms.positions[:, 1] / SAMPLING
    return incoherent(x, y, atoms.numbers, shape, probe / SAMPLING, periodic=True)


def sublattice_contrast(image, min_distance=3):
    """The brightest column peaks over the dimmest (the 90th over the 10th percentile of local maxima)."""
    smooth = ndimage.gaussian_filter(image, 0.7, mode="wrap")
    peaks = smooth[(smooth == ndimage.maximum_filter(smooth, 2 * min_distance + 1, mode="wrap"))
                   & (smooth > smooth.min() + 0.05 * np.ptp(smooth))]
    return float(np.percentile(peaks, 90) / np.percentile(peaks, 10))


def main():
    print(f"{'tile':22} {'positions':>9} {'multislice s':>12} {'best probe sigma':>16} {'Pearson r':>9} "
          f"{'contrast: multislice':>21} {'model':>6}")
    for name, atoms in tiles().items():
        start = time.perf_counter()
        truth = multislice(atoms)
        seconds = time.perf_counter() - start
        fits = {sigma: np.corrcoef(truth.ravel(), model(atoms, truth.shape, sigma).ravel())[0, 1]
                for sigma in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45)}
        sigma = max(fits, key=fits.get)
        print(f"{name:22} {truth.size:9d} {seconds:12.0f} {sigma:14.2f} A {fits[sigma]:9.3f} "
              f"{sublattice_contrast(truth):21.2f} {sublattice_contrast(model(atoms, truth.shape, sigma)):6.2f}",
              flush=True)


if __name__ == "__main__":
    main()
