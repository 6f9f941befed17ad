import math

import pyro
import pytest
import torch
from torch.nn import functional as F

from models import RVAE, VAE, load_checkpoint, save_checkpoint
from models.decoders import DECODERS, WarpDecoder
from models.geometry import inverse_transform

DECODER_NAMES = sorted(DECODERS)


def dot_right_of_centre(size=16):
    image = torch.zeros(size, size)
    image[size // 2 - 1:size // 2 + 1, size - 4:size - 2] = 1.0
    return image


def turn(images, angles):
    """Rotate ``images`` counter-clockwise as displayed by ``angles`` (radians)."""
    grid = F.affine_grid(inverse_transform(angles), images.shape, align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def glyphs(n, seed, max_degrees=60.0, size=16):
    """An 'L' (class 0) or a 'T' (class 1), each turned by a random angle in +-max_degrees."""
    base = torch.zeros(2, 1, size, size)
    base[0, 0, 3:13, 5:7] = base[0, 0, 11:13, 5:11] = 1.0
    base[1, 0, 3:5, 4:12] = base[1, 0, 3:13, 7:9] = 1.0
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    return turn(base[labels], angles), labels


def fit(model, x, y=None, epochs=10, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            loss = model.loss(x[batch], None if y is None else y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def test_warp_positive_angle_is_counter_clockwise_as_displayed():
    decoder = WarpDecoder((1, 16, 16), code_dim=1, hidden=(4,))
    canvas = decoder.canvas
    with torch.no_grad():
        last = decoder.net[-1]
        last.weight.zero_()
        pad = (canvas[1] - 16) // 2
        big = torch.nn.functional.pad(dot_right_of_centre(), (pad, pad, pad, pad))
        last.bias.copy_(big.reshape(-1))
        image = decoder(torch.zeros(1, 1), torch.tensor([math.pi / 2]))[0, 0]
    row, col = divmod(int(image.argmax()), 16)
    assert row < 5 and 6 <= col <= 9, (row, col)  # the dot went from the right edge to the top


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_decode_at_angle_equals_rotated_decode(name):
    torch.manual_seed(0)
    model = RVAE((1, 16, 16), decoder=name, hidden=(32, 32))
    if name == "broadcast":
        # 3x3 kernels do not commute with rotation; keep only their centre taps so the
        # test sees the coordinate rotation alone (a trained decoder learns the rest).
        with torch.no_grad():
            for conv in model.decoder.modules():
                if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3):
                    conv.weight[..., [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] = 0
    z = torch.randn(3, 2)
    turned = model.decode(z, angle=torch.full((3,), math.pi / 2))
    upright = model.decode(z, angle=torch.zeros(3))
    # np/torch.rot90 with k=1 rotates counter-clockwise as displayed
    torch.testing.assert_close(turned, torch.rot90(upright, 1, dims=(-2, -1)), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_shift_moves_content_down_and_right(name):
    torch.manual_seed(0)
    model = RVAE((1, 16, 16), decoder=name, translation=True, hidden=(32, 32))
    z = torch.randn(1, 2)
    zero = torch.zeros(1)
    base = model.decode(z, angle=zero, shift=torch.zeros(1, 2))
    moved = model.decode(z, angle=zero, shift=torch.tensor([[2 / 8, 0.0]]))  # two rows down
    torch.testing.assert_close(moved[..., 4:12, 4:12], base[..., 2:10, 4:12], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", DECODER_NAMES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_shapes_and_gradients_reach_every_parameter(name, likelihood):
    model = RVAE((1, 12, 12), decoder=name, likelihood=likelihood, translation=True, hidden=(16, 16))
    x = torch.rand(5, 1, 12, 12)
    loss = model.loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing
    mean, std = model.encode(x)
    assert mean.shape == std.shape == (5, 1 + 2 + 2) and torch.all(std > 0)
    assert model.decode(mean).shape == x.shape  # full encoded vector, angle and shift included


def test_vae_has_no_angle_and_decodes_plain_latents():
    model = VAE((1, 12, 12), latent_dim=3)
    mean, _ = model.encode(torch.rand(2, 1, 12, 12))
    assert mean.shape == (2, 3)
    assert model.decode(mean).shape == (2, 1, 12, 12)


def test_conditional_decoder_output_depends_on_class():
    torch.manual_seed(0)
    model = RVAE((1, 12, 12), num_classes=3, hidden=(16, 16))
    z = torch.randn(2, 2)
    a = model.decode(z, angle=torch.zeros(2), y=torch.tensor([0, 0]))
    b = model.decode(z, angle=torch.zeros(2), y=torch.tensor([2, 2]))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        model.loss(torch.rand(2, 1, 12, 12))


def test_checkpoint_round_trip_restores_the_model_from_the_file_alone(tmp_path):
    model = RVAE((1, 12, 12), decoder="spatial", translation=True, likelihood="gaussian", noise_scale=None,
                 hidden=(16, 16))
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, epoch=3)
    restored, payload = load_checkpoint(path)
    assert payload["epoch"] == 3 and restored.config == model.config
    x = torch.rand(4, 1, 12, 12)
    torch.testing.assert_close(restored.encode(x), model.encode(x))
    assert not list(tmp_path.glob(".*partial*"))


def test_unknown_decoder_is_a_clear_error():
    with pytest.raises(ValueError, match=r"decoder='nope' is not one of \['broadcast', 'spatial', 'warp'\]"):
        RVAE((1, 8, 8), decoder="nope")


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable rvae checkpoint"):
        load_checkpoint(bad)


def test_trained_encoder_is_equivariant_to_rotation():
    torch.manual_seed(0)
    model = fit(RVAE((1, 16, 16), latent_dim=2), glyphs(2000, seed=0)[0])
    x, _ = glyphs(400, seed=1, max_degrees=40)  # +20 deg keeps them inside the trained range
    turned = turn(x, torch.full((len(x),), math.radians(20)))
    difference = model.encode(turned)[0][:, 0] - model.encode(x)[0][:, 0]
    difference = torch.rad2deg(torch.remainder(difference + math.pi, 2 * math.pi) - math.pi)
    assert (difference - 20).abs().median() < 4, difference.median()


def test_inferred_class_sums_the_labelled_elbos_exactly():
    # Enumeration is exact: the -ELBO with the class unknown equals the labelled -ELBOs averaged
    # over q(y|x), plus q's negative entropy, when every call sees the same random draws.
    torch.manual_seed(0)
    model = RVAE((1, 12, 12), num_classes=3, classes="inferred", class_weight=0.0, hidden=(16, 16))
    x = torch.rand(1, 1, 12, 12)
    pyro.set_rng_seed(1)
    unknown = model.loss(x)
    labelled = []
    for k in range(3):
        pyro.set_rng_seed(1)
        labelled.append(model.loss(x, torch.tensor([k])))
    q = model.classify(x)[0]
    torch.testing.assert_close(unknown, (q * torch.stack(labelled)).sum() + (q * q.log()).sum())


def test_semi_supervised_rvae_classifies_from_a_tenth_of_the_labels():
    x, labels = glyphs(2000, seed=0)
    known = labels.clone()
    known[torch.rand(len(known), generator=torch.Generator().manual_seed(0)) > 0.1] = -1
    model = fit(RVAE((1, 16, 16), num_classes=2, classes="inferred"), x, known)
    x_test, labels_test = glyphs(400, seed=1)
    accuracy = (model.classify(x_test).argmax(-1) == labels_test).float().mean()
    assert accuracy > 0.95
    assert model.reconstruct(x_test[:4]).shape == (4, 1, 16, 16)  # decodes the likeliest class


def test_joint_rvae_trains_without_labels_and_every_parameter_learns():
    model = RVAE((1, 12, 12), num_classes=3, classes="inferred", translation=True, hidden=(16, 16))
    loss = model.loss(torch.rand(6, 1, 12, 12))
    loss.backward()
    assert torch.isfinite(loss)
    assert not [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    with pytest.raises(ValueError, match="needs num_classes >= 2"):
        RVAE((1, 12, 12), classes="inferred")
    with pytest.raises(ValueError, match="no inferred class"):
        RVAE((1, 12, 12)).classify(torch.rand(1, 1, 12, 12))
