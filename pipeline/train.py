"""The train stage: fit an rVAE to the patch store with a plain torch optimizer on ``model.loss``."""
import time

import torch

from models import RVAE, save_checkpoint

from .dataset import load_training_stack
from .stores import check_writable


def train(patches_path, checkpoint_path, *, model_options=None, epochs=30, batch_size=128, lr=1e-3,
          seed=0, threads=None, overwrite=False, log=print):
    """``rvae train``: returns the trained model; writes the checkpoint atomically at the end.

    ``model_options`` are :class:`models.RVAE` keyword arguments. One line per epoch reports
    the mean -ELBO per sample and the throughput.
    """
    check_writable(checkpoint_path, overwrite)
    stack, attrs = load_training_stack(patches_path)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = RVAE(tuple(stack.shape[1:]), **(model_options or {}))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    n = len(stack)
    for epoch in range(1, epochs + 1):
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            batch = stack[order[i:i + batch_size]]
            loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        seconds = time.perf_counter() - start
        history.append(total / n)
        log(f"epoch {epoch:3d}/{epochs}  loss {total / n:10.3f}  {n / seconds:8.0f} img/s")
    save_checkpoint(checkpoint_path, model, optimizer=optimizer.state_dict(), epoch=epochs,
                    history=history, patches=str(patches_path), patch_attrs=attrs, lr=lr,
                    batch_size=batch_size, seed=seed)
    return model
