"""Progress of long Dask computations: Dask's own bars on a terminal, timestamped lines in a log.

A batch job's log is a file: a carriage-return bar there is one endless line of escape codes, so
when stderr is not a terminal progress is printed as a line every 10 % (and at most every
``every`` seconds otherwise), with the time of day and the time so far.
"""
import sys
import time
from contextlib import nullcontext

from dask.callbacks import Callback


def format_duration(seconds):
    """``'42 s'``, ``'3 min 5 s'``, ``'2 h 4 min'``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def on_terminal():
    return sys.stderr.isatty()


class ProgressLines(Callback):
    """A line per 10 % of a local Dask computation's tasks (computations under ``minimum`` s print nothing)."""

    def __init__(self, minimum=2.0, every=60.0, out=None):
        super().__init__()
        self.minimum, self.every, self.out = minimum, every, out or sys.stdout

    def _start_state(self, dsk, state):
        self.start, self.last, self.shown = time.monotonic(), time.monotonic(), 0
        self.total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished"))

    def _posttask(self, key, result, dsk, state, worker_id):
        done, now = len(state["finished"]), time.monotonic()
        tenth = done * 10 // max(self.total, 1)
        if now - self.start >= self.minimum and (tenth > self.shown or now - self.last >= self.every):
            self.shown, self.last = tenth, now
            print(f"{time.strftime('%H:%M:%S')} {done}/{self.total} tasks ({done / max(self.total, 1):.0%}) "
                  f"in {format_duration(now - self.start)}", file=self.out, flush=True)


def progress_bar(enabled):
    """Progress for a computation on Dask's local schedulers (those over two seconds)."""
    if not enabled:
        return nullcontext()
    if not on_terminal():
        return ProgressLines()
    from dask.diagnostics import ProgressBar

    return ProgressBar(minimum=2)


def follow(futures, every=60.0):
    """Wait for futures on a distributed cluster, showing their progress: distributed's bar on a
    terminal, else a line per 10 % (or per ``every`` s) once two seconds have passed."""
    from distributed import progress

    if on_terminal():
        return progress(futures, minimum=2)
    start = last = time.monotonic()
    shown, total = 0, max(len(futures), 1)
    while True:
        finished, now = sum(f.done() for f in futures), time.monotonic()
        if now - start >= 2 and (finished * 10 // total > shown or now - last >= every):
            shown, last = finished * 10 // total, now
            print(f"{time.strftime('%H:%M:%S')} {finished}/{len(futures)} tasks ({finished / total:.0%}) in "
                  f"{format_duration(now - start)}", flush=True)
        if finished == len(futures):
            return
        time.sleep(0.5)
