"""Measurements in a fresh interpreter each, so every peak RSS belongs to one step alone."""
import json
import os
import resource
import subprocess
import sys


def peak_rss_gib():
    """This process's own peak RSS. Linux carries ``ru_maxrss`` over from the parent through
    (v)fork and exec, so a child started by a parent that once held 20 GiB reports 20 GiB;
    ``VmHWM`` belongs to the process's own address space."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def report(**fields):
    """Print this process's result line, with its peak RSS in GiB."""
    print("RESULT " + json.dumps({**fields, "rss_gib": peak_rss_gib()}), flush=True)


def measure(script, *args, env=None):
    """Run ``script --worker *args`` (with ``env`` added to this process's environment) and return
    the dict it passed to :func:`report`."""
    command = [sys.executable, script, "--worker", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{result.stderr[-3000:]}")
    return next(json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT "))
