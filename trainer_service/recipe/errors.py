"""The recipe's failures, one family: a stable `code`, a `message`, the spec `field` at fault
and a `fix`, exactly what run.json and a job's FAILED state record.

Each stage raises its own subclass (so callers and tests can tell preflight from
verification), and `run_recipe` records any of them the same way.
"""

from __future__ import annotations

from typing import Any


class RecipeError(Exception):
    """A run failed; `code`, `message`, `field`, `fix` (and check `details`) as recorded."""

    exit_code = 4
    default_field = ""

    def __init__(self, code: str, message: str, field: str | None = None, fix: str = "",
                 details: dict[str, Any] | None = None):
        self.code, self.message = code, message
        self.field = field if field else self.default_field
        self.fix, self.details = fix, details or {}
        where = f"{self.field}: " if self.field else ""
        super().__init__(f"{code}: {where}{message}" + (f" Fix: {fix}" if fix else ""))

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "field": self.field,
                "fix": self.fix}


class PreflightError(RecipeError):
    """A preflight check failed before the first optimizer step."""

    default_field = "dataset"


class ChatFormatError(RecipeError):
    """The chat format cannot train the stop token; `fix` says what to change."""

    default_field = "chat_template"


class TrainError(RecipeError):
    """Training cannot start or finish."""

    default_field = "training"


class VerifyError(RecipeError):
    """Postflight found the trained model unfit to ship; `details` holds the check's numbers."""

    default_field = "verify"
