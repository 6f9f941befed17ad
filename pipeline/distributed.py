"""Data-parallel training: where ranks come from, and how gradients are synchronised.

Two separate ideas, as in Lightning's fabric:

* :class:`ClusterEnvironment` reads rank, world size and local rank from the launcher's
  variables (torchrun, horovodrun, Open MPI's mpirun, SLURM's srun).
* A strategy (``none``, ``ddp``, ``horovod``) synchronises gradients. The training loop calls
  ``setup``, ``wrap``, ``allreduce_mean``, ``allgather``, ``barrier`` and ``shutdown`` and never
  branches on the backend.
"""
import contextlib
import datetime
import os
import socket
from dataclasses import dataclass

import torch

# (launcher, rank, world size, local rank) variables, most specific first: a torchrun or an
# mpirun started inside a SLURM allocation also sees SLURM's variables.
LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("horovodrun", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),  # STEP_: only inside an srun step
)


@dataclass(frozen=True)
class ClusterEnvironment:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single process"

    @classmethod
    def detect(cls, environ=None):
        environ = os.environ if environ is None else environ
        for launcher, *keys in LAUNCHERS:
            if all(k in environ for k in keys):
                return cls(*(int(environ[k]) for k in keys), launcher)
        return cls()


class NoStrategy:
    """One process: nothing to synchronise."""

    name = "none"

    def __init__(self, environment=None, *, timeout=300, compression="none"):
        if compression not in ("none", "fp16"):
            raise ValueError(f"gradient compression {compression!r} is not one of ['fp16', 'none']")
        self.env = environment or ClusterEnvironment.detect()
        self.timeout, self.compression = timeout, compression

    rank = property(lambda self: self.env.rank)
    world_size = property(lambda self: self.env.world_size)
    local_rank = property(lambda self: self.env.local_rank)
    is_main = property(lambda self: self.env.rank == 0)

    @property
    def device(self):
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def setup(self):
        if self.env.world_size > 1:
            raise ValueError(f"launched as {self.env.world_size} ranks by {self.env.launcher}, but --backend none "
                             f"trains one process; pass --backend ddp or --backend horovod")

    def wrap(self, model, optimizer):
        return model, optimizer

    def allreduce_mean(self, value):
        return self.start_allreduce_mean(value)()

    def start_allreduce_mean(self, value):
        """Start averaging a number over the ranks without waiting; returns a call that waits for it."""
        return lambda: float(value)

    def allgather(self, obj):
        return [obj]

    def describe(self):
        """Where the ranks run, e.g. ``2 rank(s) (srun): node1 cpu, cpu``: a batch log's first line.
        Every rank must call it (it gathers from all)."""
        hosts = {}
        for host, device in self.allgather((socket.gethostname(), str(self.device))):
            hosts.setdefault(host, []).append(device)
        where = "; ".join(f"{host} {', '.join(devices)}" for host, devices in hosts.items())
        return f"{self.world_size} rank(s) ({self.env.launcher}): {where}"

    def barrier(self):
        pass

    def shutdown(self):
        pass


class DDPStrategy(NoStrategy):
    """torch.distributed: gloo on CPU, NCCL on GPU; ``DistributedDataParallel`` averages gradients."""

    name = "ddp"

    def setup(self):
        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", 9500)) % 20000))
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=self.timeout))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def wrap(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters and buffers at construction.
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the model's buffers are constants (priors, grids): synced once at construction, not every forward
        wrapped = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True,
                                          forward_sync_buffers=False)
        if self.compression == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            wrapped.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return wrapped, optimizer

    def start_allreduce_mean(self, value):
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64)
        work = dist.all_reduce(tensor, async_op=True)

        def result():
            work.wait()
            return tensor.item() / self.world_size
        return result

    def allgather(self, obj):
        import torch.distributed as dist

        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self):
        import torch.distributed as dist

        dist.barrier()

    def shutdown(self):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class HorovodStrategy(NoStrategy):
    """Horovod: ``DistributedOptimizer`` averages gradients (MPI or Gloo underneath)."""

    name = "horovod"

    def setup(self):
        try:
            import horovod.torch as hvd
        except ImportError as err:
            raise ValueError("--backend horovod needs Horovod built for this torch: run "
                             "`make horovod` (scripts/build-horovod.sh), or use --backend ddp") from err
        if self.device.type == "cpu":
            # Horovod's background thread coordinates the ranks once per cycle; on CPU ranks it competes
            # with compute for the cores. A CPU step lasts tens of ms or more, so a 5 ms cycle adds little
            # latency; it gave 2 ranks ~9 % more img/s here (interleaved runs). A user's value wins.
            os.environ.setdefault("HOROVOD_CYCLE_TIME", "5")
            # Open MPI busy-polls while it waits; Horovod's thread waiting on a slower rank then takes
            # the core from this rank's compute. Yielding while idle hands it back (read at MPI_Init).
            os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        hvd.init()
        self.hvd = hvd
        self.env = ClusterEnvironment(hvd.rank(), hvd.size(), hvd.local_rank(), self.env.launcher)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def wrap(self, model, optimizer):
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        compression = hvd.Compression.fp16 if self.compression == "fp16" else hvd.Compression.none
        # groups=1: all gradients in one grouped allreduce, negotiated once per step rather than per tensor
        return model, hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average,
                                               compression=compression, groups=1)

    def start_allreduce_mean(self, value):
        handle = self.hvd.allreduce_async(torch.tensor([float(value)], dtype=torch.float64), op=self.hvd.Average)
        return lambda: self.hvd.synchronize(handle).item()

    def allgather(self, obj):
        return self.hvd.allgather_object(obj)

    def barrier(self):
        self.hvd.barrier()

    def shutdown(self):
        self.hvd.shutdown()


STRATEGIES = {"none": NoStrategy, "ddp": DDPStrategy, "horovod": HorovodStrategy}


def precision_context(device, precision):
    """The forward passes' autocast context on ``device``: bfloat16 for ``precision="bf16"``, else none."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_strategy(backend, *, timeout=300, compression="none", environment=None):
    """The strategy for ``backend``; ``compression="fp16"`` halves the bytes each gradient allreduce
    sends; ``environment``: the ranks (default: detected from the launcher)."""
    if backend not in STRATEGIES:
        raise ValueError(f"backend {backend!r} is not one of {sorted(STRATEGIES)}")
    return STRATEGIES[backend](environment, timeout=timeout, compression=compression)
