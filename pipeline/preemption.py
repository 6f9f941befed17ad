"""Stopping cleanly when the batch system asks: SIGTERM or SIGUSR1 (SLURM's ``--signal``).

A stage that holds a :class:`PreemptionFlag` notes the signal instead of dying, finishes the step
or block it is in, saves what it has and raises :class:`Preempted`; the CLI exits with
:data:`PREEMPTED_EXIT` (75), and the same command, run again, resumes.
"""
import signal

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again" -- run the same command again to resume


class Preempted(Exception):
    """A stage stopped on a signal after saving what it needs to resume."""


class PreemptionFlag:
    """Remembers SIGTERM/SIGUSR1 instead of dying, so a loop can stop at a step boundary."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.signals, self.received, self._previous = signals, None, {}

    def __enter__(self):
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
