"""Run by every rank of a launched job (torchrun, horovodrun, mpirun, srun) in the distributed tests.

Trains through the pipeline's own ``train`` and saves this rank's final parameters to
``OUT/rank<R>.pt``, so the test can compare ranks with each other and with one process.
usage: rank_job.py PATCHES OUT BACKEND EPOCHS BATCH
"""
import sys
from pathlib import Path

import torch

import models  # noqa: F401
from pipeline.distributed import ClusterEnvironment
from pipeline.train import train

patches, out, backend, epochs, batch = sys.argv[1:6]
torch.set_num_threads(1)
model = train(patches, Path(out) / "model.ckpt", backend=backend, epochs=int(epochs), batch_size=int(batch),
              seed=3, model_options={"hidden": (64, 64)}, threads=1, timeout=60, log=print)
rank = ClusterEnvironment.detect().rank
torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
print(f"rank {rank} of {ClusterEnvironment.detect().world_size} done")
