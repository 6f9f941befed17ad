"""Progress of long Dask computations: Dask's own bars on a terminal, timestamped lines in a log.

A batch job's log is a file: a carriage-return bar there is one endless line of escape codes, so
when stderr is not a terminal progress is printed as a line every 10 % (and, between those, a
line whenever a task ends ``every`` seconds or more after the last line), with the time of day and
the time so far.
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


class ProgressLog:
    """Timestamped progress lines: one per 10 % of the work, and one for an update ``every`` s or
    more after the last line; none before ``minimum`` s have passed."""

    def __init__(self, total, minimum=2.0, every=60.0, out=None):
        self.total, self.minimum, self.every, self.out = max(total, 1), minimum, every, out or sys.stdout
        self.start = self.last = time.monotonic()
        self.shown = 0

    def update(self, done):
        now, tenth = time.monotonic(), done * 10 // self.total
        if now - self.start >= self.minimum and (tenth > self.shown or now - self.last >= self.every):
            self.shown, self.last = tenth, now
            print(f"{time.strftime('%H:%M:%S')} {done}/{self.total} tasks ({done / self.total:.0%}) "
                  f"in {format_duration(now - self.start)}", file=self.out, flush=True)


class ProgressLines(Callback):
    """:class:`ProgressLog` lines for a computation on Dask's local schedulers."""

    def _start_state(self, dsk, state):
        self.log = ProgressLog(sum(len(state[key]) for key in ("ready", "waiting", "running", "finished")))

    def _posttask(self, key, result, dsk, state, worker_id):
        self.log.update(len(state["finished"]))


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
    lines = ProgressLog(len(futures), every=every)
    while True:
        finished = sum(f.done() for f in futures)
        lines.update(finished)
        if finished == len(futures):
            return
        time.sleep(0.5)
