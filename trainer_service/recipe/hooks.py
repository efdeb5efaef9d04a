"""How a caller follows and steers a recipe run: stage changes, metrics, checkpoints, stop.

The command line passes no hooks; the training service passes ones that turn each call
into a job event and answer `stop_requested` from the job's cancel or drain request.
"""

from __future__ import annotations

from typing import Any

STAGES = ("validating", "training", "merging", "verifying")


class RecipeStopped(Exception):
    """The run stopped at a safe point because its caller asked it to (cancel or drain)."""

    def __init__(self, reason: str, stage: str, checkpoint: str | None = None):
        self.reason, self.stage, self.checkpoint = reason, stage, checkpoint
        where = f" after {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped during {stage} ({reason}){where}")


class RunHooks:
    """No-op hooks; subclasses override what they follow. Each method is called from the
    process running the recipe, between steps, never from inside a forward pass."""

    def stage(self, name: str) -> None:
        """The run enters one of STAGES."""

    def planned(self, plan: dict[str, Any]) -> None:
        """Preflight's plan of the run: train items, optimizer steps, warmup, evaluations."""

    def metrics(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row: a train log (`loss`) or an evaluation (`eval_loss`)."""

    def checkpoint(self, step: int, path: str) -> None:
        """A checkpoint folder was written."""

    def stop_requested(self) -> str | None:
        """A reason to stop at the next safe point ("cancel", "drain"), or None."""
        return None


def check_stop(hooks: RunHooks, stage: str) -> None:
    """Raises RecipeStopped when the caller asked to stop; called between stages."""
    reason = hooks.stop_requested()
    if reason:
        raise RecipeStopped(reason, stage)
