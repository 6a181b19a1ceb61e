"""The error types of the toolkit and their exit codes (the one place that maps them).

Exit codes (README, "Errors and exit codes"): 0 success; 1 the work ran but a check failed; 2 bad input or usage. A ``ToolError`` is an
expected failure that the CLI reports as one line; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class ToolError(Exception):
    """An expected failure, reported as one line. Exit 2 unless a subclass says otherwise."""

    exit_code = 2


class UsageError(ToolError):
    """An argument or option that cannot be honoured (bad value, conflicting options)."""


class SourceError(ToolError):
    """A source that cannot be read safely: missing, unreadable, truncated, unsafe pickle, unknown layout."""


class ConfigError(SourceError):
    """A config.json that our networks cannot honour (unsupported option, contradictory values)."""


class WeightsError(SourceError):
    """Weights that do not fit a network: missing, unexpected or mis-shaped tensors, or an unreadable file."""


class PlanError(ToolError):
    """The conversion plan does not fit the target network. ``problems`` lists every one of them."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = list(problems)
        super().__init__(f"{where}: {len(self.problems)} problem(s): " + "; ".join(self.problems))


class DataError(ToolError):
    """Tensor values that cannot be converted as asked (NaN/Inf in a source, fp16 overflow)."""


class OutputError(ToolError):
    """The output location is unusable (exists, is not ours to replace, would overwrite the input, no space)."""


class CheckFailed(ToolError):
    """The work ran but a check failed (parity out of tolerance, verification or validation mismatch)."""

    exit_code = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a run. A BaseException, like KeyboardInterrupt, so that no handler of ordinary
    errors turns it into "bad input"; the CLI reports one line and exits 128 + the signal number (130, 143)."""

    def __init__(self, signum: int, name: str):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {name}")


def located(path, message: str) -> str:
    """``"PATH: message"``, without a second ``PATH: `` when the message already starts with it (messages of
    wrapped errors often do)."""
    prefix = f"{path}: "
    while message.startswith(prefix):
        message = message[len(prefix):]
    return prefix + message
