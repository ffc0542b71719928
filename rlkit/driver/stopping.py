"""Stopping a run cleanly when asked: SIGTERM (``rlkit stop``, Ray's job stop, Slurm's and
Kubernetes' termination) lets the step in flight finish, writes a checkpoint, records the stop in
the run folder (``stopped.json``) and ends the run, so ``rlkit train --resume RUN`` continues it.

A second SIGTERM while the checkpoint is written is ignored (the checkpoint is what the first one
asked for); SIGKILL still kills at once, and a run killed so resumes from its last checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """Context that turns SIGTERM into a request the training loop reads between steps."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum, _frame) -> None:
        if not self.requested:
            print("stop requested (SIGTERM): finishing the current step, then writing a checkpoint",
                  file=sys.stderr, flush=True)
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
