"""Where the Dask stages run: this process's threads, a ``LocalCluster``, or an MPI job (dask-mpi).

``threads`` is Dask's threaded scheduler (no scheduler process, no serialisation).
``local`` (the default) starts a ``distributed.LocalCluster`` of threads in this process: the
same engine as a multi-node run, with its memory management, on one node.
``mpi`` turns the ranks of an ``srun``/``mpirun`` job into a Dask cluster with dask-mpi: rank 0
runs the scheduler, rank 1 runs the stage (the client), the other ranks are workers; every rank
but the client exits when the stage ends. Start at least 3 ranks.
``slurm`` runs the workers as SLURM jobs (dask-jobqueue's ``SLURMCluster``, adaptive: from one
job up to ``rvae.slurm.max_jobs``, default 4), from a login node or another job. With a site
profile (``--site``, or ``site:`` in a run's configuration) they take its account, partition,
QOS, setup lines and environment (those of its CPU-only stages) and log to ``WORKDIR/slurm/logs``;
otherwise their size, partition and account are dask-jobqueue's settings (``jobqueue.slurm.*`` in
``~/.config/dask/jobqueue.yaml`` or ``DASK_JOBQUEUE__SLURM__*`` variables); where those leave
them unset, a worker job is 1 core, 2 GiB and an hour.
"""
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

SCHEDULERS = ("threads", "local", "mpi", "slurm")


@contextmanager
def dask_scheduler(kind="local", site=None, logs=None):
    """Run the enclosed Dask work on ``kind``; yields the ``distributed.Client`` (None for threads).

    ``slurm``: worker jobs take the ``site`` profile (:class:`~pipeline.sites.Site`: the CPU-only
    stages' account, partition, QOS and constraint, its reservation, memory and extra directives,
    its ``setup`` lines and environment) and write their logs in ``logs``."""
    if kind not in SCHEDULERS:
        raise ValueError(f"--dask {kind!r} is not one of {', '.join(SCHEDULERS)}")
    if kind != "mpi":
        match_zarr_pool(os.cpu_count())
    with (_slurm_cluster(site, logs) if kind == "slurm" else CLUSTERS[kind]()) as client:
        yield client


@contextmanager
def _threads():
    import dask
    import dask.threaded

    # Without a cluster Dask still imports distributed (~0.5 s) to look for a client: when the
    # scheduler is named rather than given as a callable, and when it chooses a rechunk method.
    with dask.config.set({"scheduler": dask.threaded.get, "array.rechunk.method": "tasks"}):
        yield None


@contextmanager
def _local_cluster():
    from distributed import Client, LocalCluster

    # Task errors reach this process as exceptions (and become one-line errors); the cluster's
    # own logs of them, and of a progress bar's feed cancelled at shutdown, would only repeat them.
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    # Futures that distributed's comms abandon at shutdown (a BatchedSend's wake-up timeout) are
    # reported by asyncio when garbage-collected, which may be at interpreter exit, after this
    # context: that logger stays quiet for the rest of the process.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        # No dashboard; the scheduler's own HTTP endpoint on a free port, not 8787: a second rvae
        # on the node would otherwise print a port-in-use warning.
        with LocalCluster(processes=False, n_workers=1, threads_per_worker=os.cpu_count(),
                          dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"}
                          ) as cluster, Client(cluster) as client:
            yield client
    finally:
        quiet.setLevel(level)


@contextmanager
def _mpi_cluster():
    import dask_mpi
    from distributed import Client
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() < 3:
        raise ValueError("--dask mpi needs at least 3 ranks (scheduler, client, workers); "
                         "launch with srun -n 3 or mpirun -n 3 or more")
    # Scheduler and workers log their shutdown at length; task errors still reach the client.
    logging.getLogger("distributed").setLevel(logging.ERROR if MPI.COMM_WORLD.Get_rank() == 1 else logging.CRITICAL)
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK", 1))
    match_zarr_pool(threads)  # every rank: the worker ranks run inside initialize()
    dask_mpi.initialize(nthreads=threads, dashboard=False)
    with Client() as client:  # only the client rank gets here; dask-mpi set its scheduler address
        yield client


SLURM_WORKER = {"cores": 1, "memory": "2GiB", "walltime": "01:00:00"}  # where jobqueue.slurm.* says nothing


@contextmanager
def _slurm_cluster(site=None, logs=None):
    import dask
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    logging.getLogger("distributed").setLevel(logging.ERROR)  # worker jobs come and go at length
    unset = {key: value for key, value in SLURM_WORKER.items() if dask.config.get(f"jobqueue.slurm.{key}") is None}
    options = {**unset, **(worker_jobs(site) if site else {})}
    if logs is not None:
        Path(logs).mkdir(parents=True, exist_ok=True)
        options["log_directory"] = str(logs)
    with SLURMCluster(**options) as cluster, Client(cluster) as client:
        cluster.adapt(minimum_jobs=1, maximum_jobs=dask.config.get("rvae.slurm.max_jobs", 4))
        yield client


def worker_jobs(site):
    """dask-jobqueue ``SLURMCluster`` options from a site profile: Dask workers are CPU jobs, so the
    profile's CPU-only stages' account, partition, QOS and constraint, its reservation, memory and
    extra directives, and its setup lines and environment before each worker starts."""
    from .batch_scripts import export, one_line

    chosen = site.for_stage(cpu_only=True)
    directives = [f"--{key}={value}" for key, value in (("qos", chosen["qos"]), ("constraint", chosen["constraint"]),
                                                        ("reservation", site.reservation)) if value]
    options = {"job_extra_directives": [*directives, *site.extra_sbatch],
               "job_script_prologue": [*(one_line(line, "setup") for line in site.setup),
                                       *(export(key, value) for key, value in site.env.items())]}
    if chosen["account"]:  # one word each (the profile's schema): safe on an #SBATCH line
        options["account"] = chosen["account"]
    if chosen["partition"]:
        options["queue"] = chosen["partition"]
    if site.mem:
        options["job_mem"] = site.mem
    return options


CLUSTERS = {"threads": _threads, "local": _local_cluster, "mpi": _mpi_cluster}


def match_zarr_pool(threads):
    """Give zarr's thread pool, which decodes and encodes chunks while a Dask thread waits on it,
    as many threads as Dask has.

    Its default (CPUs + 4) only adds threads, and each keeps a malloc arena that holds on to freed
    chunk buffers: a bounded stack from an 8 GiB cube peaked at 0.55-0.59 GiB of RSS with the
    default, 0.45-0.46 GiB with this, on 2 cores. zarr starts its pool on first use, so this
    counts only before the process's first chunk read or write.
    """
    import zarr

    zarr.config.set({"threading.max_workers": threads})


def compute(*collections, progress=True):
    """``dask.compute`` on the active scheduler, with a progress bar for work longer than 2 s.

    When a task fails, this returns (raises) only once no other task of the computation is still
    running: a caller then removing a half-written output is not raced by writes still in flight.
    """
    import dask
    import dask.threaded

    from .progress import follow, progress_bar

    client = None
    if "distributed" in sys.modules:  # no client can exist unless distributed was imported
        from distributed import get_client

        try:
            client = get_client()
        except ValueError:
            pass
    if client is None:
        if dask.base.get_scheduler() not in (None, dask.threaded.get):  # None: arrays' default, threads
            with progress_bar(progress):
                return dask.compute(*collections)
        # Dask's threaded scheduler raises on the first error while the pool's other tasks run on;
        # a pool of our own is shut down (queued tasks cancelled, running ones awaited) first.
        threads = dask.config.get("num_workers", None) or os.cpu_count()
        with progress_bar(progress), ThreadPoolExecutor(threads) as pool:
            try:
                return dask.compute(*collections, pool=pool)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    futures = client.compute(list(collections))
    try:
        if progress:
            follow(futures)
        return tuple(client.gather(futures))
    except BaseException:
        client.cancel(futures)
        wait_until_idle(client)
        raise


def wait_until_idle(client, timeout=60):
    """Wait (at most ``timeout`` s) until no worker of ``client`` runs a task."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            return
        time.sleep(0.05)
