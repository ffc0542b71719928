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


def checkpoint_or_stop(run, stop: StopRequest, step: int, max_steps: int, save_steps: int, checkpoint) -> bool:
    """After step ``step`` (1-based) is logged: write the checkpoint ``save_steps`` asks for, and, if
    a stop was requested, make sure one exists for this step and mark the run stopped. True: stop now."""
    if step >= max_steps:
        return False  # the run ends anyway; its final model is exported, no checkpoint needed
    saved = bool(save_steps) and step % save_steps == 0
    if saved:
        checkpoint()
    if not stop.requested:
        return False
    if not saved:
        checkpoint()
    run.mark_stopped(step, f"{stop.signal_name} received")
    return True


def stopped_summary(run, state: dict) -> dict:
    """What a run stopped by request returns (it writes no summary.json: it is not finished)."""
    print(f"stopped after step {state['step']}; checkpoint {run.checkpoint_dir(state['step'])}; continue with: "
          f"rlkit train --resume {run.path}", file=sys.stderr, flush=True)
    return {"run_dir": str(run.path), "steps": state["step"], "stopped": True,
            "checkpoint": str(run.checkpoint_dir(state["step"]))}
