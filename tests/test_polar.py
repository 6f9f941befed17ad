"""Rotation as a shift on polar coordinates (models.polar): the sign convention, every angle at
once, and the rotational symmetry an image has in real space."""
import math

import numpy as np
import pytest
import torch

from models.geometry import upright
from models.polar import best_angle, polar_grid, polar_size, rotation_scores, rotational_symmetry, sample_polar


def columns(size=48, spacing=9.0, sublattice=1.0, angle=0.0):
    """A hexagonal lattice of Gaussian columns centred on a column, turned counter-clockwise by
    ``angle`` (radians, as displayed); ``sublattice`` < 1 dims every other column of a triangle
    (a 3-fold lattice in real space, whose power spectrum is still 6-fold)."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    image = np.zeros((size, size))
    a1, a2 = np.array([1.0, 0.0]), np.array([0.5, math.sqrt(3) / 2])
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for i in range(-8, 9):
        for j in range(-8, 9):
            for k, (basis, weight) in enumerate(((0.0, 1.0), (1 / 3, sublattice))):
                site = spacing * ((i + basis) * a1 + (j + basis) * a2) if k else spacing * (i * a1 + j * a2)
                if k and sublattice == 1.0:
                    continue
                px, py_up = turn @ site
                image += weight * np.exp(-((x - px) ** 2 + (y + py_up) ** 2) / (2 * 1.5 ** 2))
    return torch.tensor(image, dtype=torch.float32)[None, None]


@pytest.mark.parametrize("degrees", [-17.0, 0.0, 4.3, 23.9])
def test_every_angle_at_once_finds_a_counter_clockwise_turn(degrees):
    template = columns(angle=0.0)
    turned = columns(angle=math.radians(degrees))
    grid, weights = polar_grid(48, 48, *polar_size(48, 48))
    scores = rotation_scores(sample_polar(turned, grid), sample_polar(template, grid), weights)
    found = best_angle(scores, torch.zeros(1), math.radians(30))  # a 6-fold lattice: one period
    assert math.degrees(found.item()) == pytest.approx(degrees, abs=0.15)
    # and turning the window back by it gives the template
    back = upright(turned, found)
    disc = torch.tensor(np.hypot(*(np.mgrid[:48, :48] - 23.5)) < 18)
    assert (back - template)[0, 0][disc].abs().mean() < 0.02 * template.max()


@pytest.mark.parametrize("sublattice, order", [(1.0, 6), (0.5, 3)])
def test_rotational_symmetry_is_read_in_real_space(sublattice, order):
    grid, weights = polar_grid(48, 48, *polar_size(48, 48))
    image = sample_polar(columns(sublattice=sublattice), grid)[0]
    assert rotational_symmetry(image, weights) == order


def test_a_square_lattice_is_four_fold():
    y, x = np.mgrid[:48, :48] - 23.5
    image = torch.tensor(np.cos(2 * np.pi * x / 8) + np.cos(2 * np.pi * y / 8), dtype=torch.float32)[None, None]
    grid, weights = polar_grid(48, 48, *polar_size(48, 48))
    assert rotational_symmetry(sample_polar(image, grid)[0], weights) == 4
