"""What every ``pixart-ms`` command shares: one error reporter (a ToolError is one line and its exit code), one
spelling of the component option, and quiet MindSpore logging."""
from __future__ import annotations

import os
import sys

import click

from .errors import ToolError, UsageError


def quiet_mindspore() -> None:
    """MindSpore logs every warning to stderr by default (GLOG_v=2); keep the CLI's output readable. Must run
    before MindSpore is imported."""
    os.environ.setdefault("GLOG_v", "3")


def fail(exc: ToolError):
    """One clear line on stderr, and the exit code the error carries."""
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


def component_option(choices, help_text: str, aliases=()):
    """``--component NAME`` (repeatable, or comma-separated): the one spelling across commands."""
    return click.option("--component", *aliases, "component", multiple=True, metavar="NAME", help=(
        f"{help_text} Choose from: {', '.join(choices)}. Repeat it or separate names with commas."))


def split_names(values, choices) -> list[str]:
    """The names of a repeatable / comma-separated option, each checked against ``choices``."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise UsageError(f"--component {', '.join(unknown)}: unknown; choose from {', '.join(choices)}")
    return list(dict.fromkeys(names))
