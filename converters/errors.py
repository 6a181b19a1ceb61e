"""Errors of the conversion tools, each carrying the CLI exit code of DESIGN.md (2 bad input, 1 failed check)."""
from __future__ import annotations


class ToolError(Exception):
    exit_code = 2


class SourceError(ToolError):
    """A source that cannot be read safely: unreadable, truncated, unsafe pickle, unknown layout."""


class PlanError(ToolError):
    """The plan does not fit the target network. ``problems`` lists every one of them."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = list(problems)
        super().__init__(f"{where}: {len(self.problems)} problem(s): " + "; ".join(self.problems))


class DataError(ToolError):
    """Tensor values that cannot be converted as asked (NaN/Inf in a source, fp16 overflow)."""


class OutputError(ToolError):
    """The output location is unusable (exists, or would overwrite the input)."""


class CheckFailed(ToolError):
    """The work ran but a check failed (verification mismatch)."""

    exit_code = 1
