"""Spectra: the shift-VAE's shift maps against the truth and the classical estimate, PCA beside
it, its training and encode speed against pyroVED's shift-VAE, and its memory on a spectrum
image larger than RAM.

Sections (``--sections``, all but ``memory`` by default):

* ``accuracy``: synthetic spectrum images with known per-pixel shifts (`rvae synth --kind
  spectra`), cases that differ in content (channels, shift range, regions, dose), each seed
  through the pipeline's own stages with the defaults (synth, patches, train, encode). Prints the
  shift map's MAE in channels after one global offset for the shift-VAE, the classical estimate
  the results carry (cross-correlation against the aligned mean spectrum, as HyperSpy's
  ``estimate_shift1D``), and the least-squares fit of the true noise-free shape (the noise floor,
  no method knows it); how many PCA components reach the shift-VAE's reconstruction error, and how
  well the best PCA or NMF score follows the shift (|r|): neither has a shift latent.
* ``speed``: pyroVED 0.3.0's ``iVAE(invariances=['t'])`` (its shift-VAE for 1-D data) and this
  project's ``SpectrumVAE`` on the same normalised spectra, batch 100, latent_dim 2, Gaussian
  likelihood of the same width, the same epochs; in alternating rounds (pyroVED, ours, pyroVED,
  ours, ...), each in a fresh process; prints training and encode spectra/s per round, the
  median ratio, and each one's held-out -ELBO per spectrum.
* ``memory``: a raw uint16 spectrum image of ``--memory-gib`` GiB (default: 1.1 x this machine's RAM,
  1024 channels) ingested, cut (spectra binned 8x for the model), trained on for 2 epochs and encoded
  at every position, each stage a fresh process; prints each stage's wall time and peak RSS (the
  process and its children) against the RAM.

    make bench-deps                                  # pyroVED 0.3.0 (--no-deps), benchmark-only
    python benchmarks/bench_spectra.py               # accuracy and speed, ~10 minutes on 2 cores
    python benchmarks/bench_spectra.py --sections memory --workdir /big/disk   # ~20 min, ~45 GB of disk

Writes under ``$TMPDIR/rvae-benchmarks/bench-spectra`` (or ``--workdir``), never into the repository.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from scratch import scratch

BIN = Path(sys.executable).parent
# (name, synth options): cases that differ in content, not turned copies of one spectrum image
CASES = [
    ("128 ch, +-6 ch, 4 regions, dose 200", ["--channels", "128", "--grains", "4", "--dose", "200"]),
    ("128 ch, +-6 ch, 4 regions, dose 1000", ["--channels", "128", "--grains", "4", "--dose", "1000"]),
    ("256 ch, +-6 ch, 7 regions, dose 300", ["--channels", "256", "--grains", "7", "--dose", "300"]),
]


def rvae(*args):
    done = subprocess.run([str(BIN / "rvae"), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"rvae {' '.join(map(str, args))}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def channel_mae(estimate, truth, step):
    difference = (np.asarray(estimate) - np.asarray(truth)) / step
    return float(np.nanmean(np.abs(difference - np.nanmedian(difference))))


def floor_mae(cube, dose, step):
    """The MAE of least squares against the true noise-free shape of each position (shift searched)."""
    import torch

    from models.shift_search import best_shift
    from pipeline.synthetic_spectra import ShiftedSpectra, spectra

    attrs = json.loads(cube.attrs["synthetic"])
    truth = ShiftedSpectra(attrs["size"], attrs["channels"], attrs["grains"], seed=attrs["seed"])
    axis = np.arange(attrs["size"])
    _, shift, width, height = truth.truth(axis, axis)
    channel = np.arange(attrs["channels"], dtype=float)
    scale = dose / (2.0 + truth.region_height.max())
    counts = torch.tensor(cube["data"].values.reshape(-1, attrs["channels"]), dtype=torch.float32)[:, None, None]
    width, height = width.ravel(), height.ravel()

    def render(s):  # s in half-spectra
        values = spectra(channel, s.double().numpy() * attrs["channels"] / 2, width, height) * scale
        return torch.tensor(values, dtype=torch.float32)[:, None, None]

    start = torch.tensor(shift.ravel() * 2 / attrs["channels"], dtype=torch.float32)
    found = best_shift(counts, render, start, attrs["channels"]) * attrs["channels"] / 2
    return channel_mae(found.numpy(), shift.ravel(), 1.0)


def pca_baseline(patches_path, recon_error, shift_truth_at_samples):
    """(components to reach ``recon_error``, best |r| of a PCA score and of an NMF score with the shift)."""
    import xarray as xr
    from sklearn.decomposition import NMF, PCA

    from pipeline.windows import WindowSpec

    store = xr.open_zarr(patches_path)
    x = WindowSpec.from_attrs(store.attrs).normalise(store["patches"].values)[:, 0, 0]
    pca = PCA(n_components=min(32, x.shape[1])).fit(x)
    needed = None
    for k in range(1, pca.n_components_ + 1):
        scores = (x - pca.mean_) @ pca.components_[:k].T
        error = float(np.mean((scores @ pca.components_[:k] + pca.mean_ - x) ** 2))
        if error <= recon_error:
            needed = k
            break
    pca_scores = (x - pca.mean_) @ pca.components_[:4].T
    nmf_scores = NMF(n_components=4, init="nndsvda", max_iter=2000, random_state=0).fit_transform(np.clip(x, 0, None))

    def best_r(scores):
        return max(abs(np.corrcoef(scores[:, k], shift_truth_at_samples)[0, 1]) for k in range(scores.shape[1]))

    return needed, best_r(pca_scores), best_r(nmf_scores)


def accuracy(work, seeds):
    import xarray as xr

    print("shift-map MAE in channels after one global offset (defaults; synth -> patches -> train -> encode)")
    print(f"{'case':40} {'seed':>4} {'shift-VAE':>9} {'classical':>9} {'floor':>6} {'PCA k':>6} "
          f"{'PCA |r|':>7} {'NMF |r|':>7}")
    for name, options in CASES:
        for seed in seeds:
            case = work / f"{name.split(',')[0].replace(' ', '')}-{options[-1]}-seed{seed}"
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir(parents=True)
            rvae("synth", case / "cube.zarr", "--kind", "spectra", "--size", "64", "--seed", seed, *options)
            rvae("patches", case / "cube.zarr", case / "p.zarr", "--mode", "spectra")
            rvae("train", case / "p.zarr", case / "m.ckpt", "--seed", seed)
            rvae("encode", case / "cube.zarr", case / "p.zarr", case / "m.ckpt", case / "r.zarr")
            cube, results = xr.open_zarr(case / "cube.zarr"), xr.open_zarr(case / "r.zarr")
            step = float(np.diff(cube["energy"].values[:2])[0])
            truth = cube["true_shift"].values
            vae = channel_mae(results["shift"].values, truth, step)
            classical = channel_mae(results["reference_shift"].values, truth, step)
            floor = floor_mae(cube, float(options[-1]), step)
            patches = xr.open_zarr(case / "p.zarr")
            at = truth[patches["row"].values.astype(int), patches["col"].values.astype(int)]
            needed, pca_r, nmf_r = pca_baseline(case / "p.zarr", float(results["recon_error"].mean()), at)
            print(f"{name:40} {seed:>4} {vae:9.3f} {classical:9.3f} {floor:6.3f} {needed or '>32':>6} {pca_r:7.2f} "
                  f"{nmf_r:7.2f}", flush=True)
    print("(floor: least squares against each position's true noise-free shape; PCA k: components whose "
          "reconstruction error reaches the shift-VAE's; |r|: the best of 4 PCA/NMF scores against the true shift)")


# -- speed: each model trains in its own process (pyroVED keeps Pyro's global parameter store) ----
def train_worker(kind, data_path, epochs, threads):
    import torch

    torch.set_num_threads(threads)
    data = np.load(data_path)
    x, held_out = torch.from_numpy(data["x"]), torch.from_numpy(data["held_out"])
    channels = x.shape[-1]
    if kind == "pyroved":
        import pyroved as pv
        from pyro.infer import Trace_ELBO

        model = pv.models.iVAE((channels,), latent_dim=2, invariances=["t"], sampler_d="gaussian", sigmoid_d=False,
                               decoder_sig=0.1, dx_prior=0.1, seed=0)
        trainer = pv.trainers.SVItrainer(model)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=100, shuffle=True)
        start = time.perf_counter()
        for _ in range(epochs):
            trainer.step(loader)
        train_seconds = time.perf_counter() - start
        with torch.no_grad():
            elbo = float(np.mean([Trace_ELBO().loss(model.model, model.guide, chunk) / len(chunk)
                                  for chunk in held_out.split(500) for _ in range(4)]))
            start = time.perf_counter()
            for chunk in x.split(1024):
                model.encoder_z(chunk)
            encode_seconds = time.perf_counter() - start
    else:
        import models
        from models.shift_search import ShiftSearch
        from pipeline.train import make_optimizer

        torch.manual_seed(0)
        model = models.SpectrumVAE((1, 1, channels), latent_dim=2, noise_scale=0.1, shift_prior=0.1)
        optimizer = make_optimizer(model, 1e-3)  # the train stage's
        x4, held4 = x[:, None, None], held_out[:, None, None]
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in torch.randperm(len(x4)).split(100):
                loss = model.loss(x4[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        train_seconds = time.perf_counter() - start
        with torch.no_grad():
            elbo = float(np.mean([model.loss(chunk).item() for chunk in held4.split(500) for _ in range(4)]))
            start = time.perf_counter()
            for chunk in x4.split(1024):
                model.encode(chunk)
            encode_seconds = time.perf_counter() - start
            search = ShiftSearch(model)
            start = time.perf_counter()
            for chunk in x4.split(1024):
                search.refine(chunk, model.encode(chunk)[0])
            refined_seconds = time.perf_counter() - start
    result = {"train": len(x) * epochs / train_seconds, "encode": len(x) / encode_seconds, "elbo": elbo}
    if kind != "pyroved":
        result["refined"] = len(x) / refined_seconds
    print("RESULT " + json.dumps(result), flush=True)


def stub_torchvision(directory):
    """pyroVED imports torchvision for a plotting helper only; its wheel does not import beside the CPU torch."""
    package = Path(directory) / "torchvision"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("from . import utils\n")
    (package / "utils.py").write_text("def make_grid(*args, **kwargs):\n    raise NotImplementedError\n")


def speed(work, rounds, epochs, threads):
    from pipeline.synthetic_spectra import spectrum_image

    def normalised(seed):
        values = spectrum_image(size=64, channels=128, seed=seed)["data"].values.reshape(-1, 128)
        return values

    x, held_out = normalised(0), normalised(1)
    lo, hi = x.min(), x.max()
    data_path = work / "spectra.npz"
    np.savez(data_path, x=((x - lo) / (hi - lo)).astype(np.float32),
             held_out=((held_out - lo) / (hi - lo)).astype(np.float32))
    stub = Path(tempfile.mkdtemp(dir=work))
    stub_torchvision(stub)
    env = {**os.environ, "PYTHONPATH": f"{stub}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(threads)}
    print(f"\nspeed: 4096 spectra of 128 channels (held out: another seed's 4096), batch 100, latent_dim 2, gaussian "
          f"sigma 0.1, shift prior 0.1 half-spectra, {epochs} epochs, {threads} threads; alternating rounds")
    runs = {"pyroved": [], "ours": []}
    for r in range(rounds):
        for kind in ("pyroved", "ours"):
            done = subprocess.run([sys.executable, __file__, "--worker", kind, "--data", str(data_path), "--epochs",
                                   str(epochs), "--threads", str(threads)], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
            result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
            runs[kind].append(result)
            print(f"round {r + 1} {kind:8} train {result['train']:8.0f} spectra/s  encode {result['encode']:9.0f} "
                  f"spectra/s  held-out -ELBO {result['elbo']:9.1f}"
                  + (f"  refined encode {result['refined']:8.0f} spectra/s" if "refined" in result else ""),
                  flush=True)
    ratio = {key: float(np.median([o[key] / p[key] for o, p in zip(runs["ours"], runs["pyroved"])]))
             for key in ("train", "encode")}
    refined = float(np.median([o["refined"] / p["encode"] for o, p in zip(runs["ours"], runs["pyroved"])]))
    elbo = {kind: float(np.median([r["elbo"] for r in results])) for kind, results in runs.items()}
    print(f"median ratio (ours / pyroVED): training {ratio['train']:.1f}x, amortized encode {ratio['encode']:.2f}x, "
          f"refined encode {refined:.3f}x; held-out -ELBO per spectrum: ours {elbo['ours']:.1f}, pyroVED "
          f"{elbo['pyroved']:.1f} (lower is better)")


# -- memory --------------------------------------------------------------------------------------
def peak_rss(command):
    """Run ``command``; return ``(seconds, peak RSS of it and its children in bytes)``, sampled every 0.2 s."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = [0], threading.Event()

    def sample():
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))}:\n{output[-3000:]}")
    return time.perf_counter() - start, peak[0]


def write_counts(path, size, channels, dose=300.0, rows_per_write=64):
    """A raw ``(size, size, channels)`` uint16 ``.npy`` of the synthetic spectrum image's model
    (shifts to a quarter channel) with Poisson noise (each position one of 16 draws of its spectrum:
    drawing every count costs ~100 ns), written a band of rows at a time (never whole in memory)."""
    from pipeline.synthetic_spectra import ShiftedSpectra, spectra

    truth = ShiftedSpectra(size, channels, 4, seed=0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(size, size, channels))
    rng = np.random.default_rng(0)
    channel = np.arange(channels, dtype=float)
    scale = dose / (2.0 + truth.region_height.max())
    for start in range(0, size, rows_per_write):
        rows = np.arange(start, min(size, start + rows_per_write))
        labels, shift, width, height = truth.truth(rows, np.arange(size))
        keys, index = np.unique(np.stack([labels.ravel(), np.round(shift.ravel() * 4)]), axis=1, return_inverse=True)
        table = spectra(channel, keys[1] / 4, truth.region_width[keys[0].astype(int)],
                        truth.region_height[keys[0].astype(int)]) * scale
        draws = rng.poisson(np.repeat(table[:, None], 16, axis=1)).astype(np.uint16)  # (spectra, 16, channels)
        picked = draws[index.ravel(), rng.integers(0, 16, index.size)]
        out[rows[0]:rows[-1] + 1] = picked.reshape(len(rows), size, channels)
    out.flush()


def memory(work, gib, binning=8):
    """Every stage on a spectrum image larger than RAM, each in a fresh process: its wall time and peak RSS."""
    import psutil

    ram = psutil.virtual_memory().total
    channels = 1024
    size = int(np.ceil(np.sqrt(gib * 2 ** 30 / (2 * channels)) / 64) * 64)
    source, cube = work / "big.npy", work / "big.zarr"
    start = time.perf_counter()
    write_counts(source, size, channels)
    print(f"\nmemory: {source}: ({size}, {size}, {channels}) uint16 counts, {source.stat().st_size / 2 ** 30:.1f} GiB "
          f"(written in {time.perf_counter() - start:.0f} s); RAM {ram / 2 ** 30:.1f} GiB; spectra binned {binning}x "
          f"for the model", flush=True)
    steps = [("ingest", [source, cube, "--dims", "y,x,energy", "--dask", "threads", "--overwrite"]),
             ("patches", [cube, work / "big-p.zarr", "--mode", "spectra", "--binning", binning, "--dask", "threads",
                          "--overwrite"]),
             ("train", [work / "big-p.zarr", work / "big.ckpt", "--epochs", "2", "--overwrite"]),
             ("encode", [cube, work / "big-p.zarr", work / "big.ckpt", work / "big-r.zarr", "--overwrite"])]
    for name, args in steps:
        seconds, peak = peak_rss([str(BIN / "rvae"), name, *map(str, args)])
        extra = f", {size * size / seconds:,.0f} spectra/s" if name == "encode" else ""
        print(f"{name:8} {seconds:8.0f} s  peak RSS {peak / 2 ** 30:5.2f} GiB = {peak / ram:.1%} of RAM{extra}",
              flush=True)
    on_disk = sum(f.stat().st_size for f in cube.rglob("*") if f.is_file())
    print(f"cube.zarr {on_disk / 2 ** 30:.1f} GiB on disk; {size * size:,} spectra encoded")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["accuracy", "speed"],
                        choices=["accuracy", "speed", "memory"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-gib", type=float, help="size of the memory section's cube (default 1.1 x RAM)")
    parser.add_argument("--workdir", type=Path, default=scratch("bench-spectra"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return train_worker(args.worker, args.data, args.epochs, args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if "accuracy" in args.sections:
        accuracy(work, args.seeds)
    if "speed" in args.sections:
        speed(work, args.rounds, args.epochs, args.threads)
    if "memory" in args.sections:
        import psutil

        memory(work, args.memory_gib or 1.1 * psutil.virtual_memory().total / 2 ** 30)


if __name__ == "__main__":
    main()
