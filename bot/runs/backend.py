"""The run backend interface: how the worker starts, follows, cancels and collects a training run.

A run is a run directory (see trainer.run): config.json and train.jsonl (and
eval.jsonl) in; metrics.jsonl as it trains, then adapter/, eval_predictions.jsonl,
result.json, report.md and report.png out. A file `cancel` in it asks the
trainer to stop at its next step.

A backend takes the *local* run directory. Whatever happens wherever the run
executes, its handle keeps that directory looking like a local run's: metrics
lines appear in metrics.jsonl while it trains, the outputs are there by the
time `poll()` reports the end, and a `cancel` file written there (by
`/retrain cancel`) reaches the trainer. So following, registering and
reporting a run are the same code whatever the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..settings import Settings


@dataclass(frozen=True)
class Ending:
    """How a run ended, as far as the backend knows.

    `code` is the trainer's exit status (trainer/__main__.py), None when it never reported one.
    `lost` means the run went away with its host or worker (a node died, its process was killed
    from outside): nothing about the run itself is to blame, so it is worth trying again.
    `reason` is what the backend knows better than an exit status can say (for the channel).
    """

    code: int | None
    lost: bool = False
    reason: str = ""


class RunHandle(Protocol):
    def poll(self) -> Ending | None:
        """None while the run executes; how it ended once it has (its outputs then in the run dir).

        Called every half second or so by the follower: a backend may do its copying here."""

    def cancel(self) -> None:
        """`/retrain cancel` asked (its `cancel` file is in the run dir): stop at the next step, within seconds."""

    def stop(self) -> None:
        """The worker is stopping: end the run now (safe to call from a signal handler)."""


class RunBackend(Protocol):
    name: str

    def start(self, run_dir: Path) -> RunHandle:
        """Start the run prepared in `run_dir` and return at once."""


def backend_for(settings: Settings, owner: dict | None = None) -> RunBackend:
    """The backend the settings ask for: Ray when SUPPORTBOT_RAY_ADDRESS is set, else a local child process.

    `owner` (bot.runs.local.owner_of) goes into a local trainer's pid file: who may kill it as an orphan."""
    if settings.ray_address:
        from .ray import RayBackend

        return RayBackend(settings.ray_address, num_gpus=settings.ray_num_gpus)
    from .local import LocalBackend

    return LocalBackend(owner)
