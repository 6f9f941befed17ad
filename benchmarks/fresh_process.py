"""Measurements in a fresh interpreter each, so every peak RSS belongs to one step alone."""
import json
import resource
import subprocess
import sys


def report(**fields):
    """Print this process's result line, with its peak RSS in GiB (Linux reports kB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps({**fields, "rss_gib": rss}), flush=True)


def measure(script, *args):
    """Run ``script --worker *args`` and return the dict it passed to :func:`report`."""
    command = [sys.executable, script, "--worker", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed:\n{result.stderr[-3000:]}")
    return next(json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT "))
