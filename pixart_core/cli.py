"""What every ``pixart-ms`` command shares: one error reporter (a ToolError is one line and its exit code), printing
that survives any file name, SIGINT/SIGTERM turned into one line and an exit code, one spelling of the component
option, and quiet MindSpore logging.

This module is imported before every argument check: it must stay free of torch, MindSpore and numpy.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
from contextlib import contextmanager

import click

from .errors import Interrupted, ToolError, UsageError

_DOUBLED = re.compile(r"^(?P<path>[^:\s][^:]*): (?P=path): ")


def quiet_mindspore() -> None:
    """MindSpore logs every warning to stderr by default (GLOG_v=2); keep the CLI's output readable. Must run
    before MindSpore is imported."""
    os.environ.setdefault("GLOG_v", "3")


def printable(text: str) -> str:
    """``text`` as any terminal can print it: a non-UTF-8 file name (bytes that Python keeps as surrogates) shows
    as ``\\xff`` escapes instead of raising UnicodeEncodeError."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def echo(text: str = "", err: bool = False) -> None:
    click.echo(printable(text), err=err)


def note(line: str) -> None:
    """A one-line remark on stderr (stdout may carry --json)."""
    echo(line, err=True)


def one_line(message: str) -> str:
    """An error message as one line: newlines folded, a path repeated by a wrapped error said once."""
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    while (m := _DOUBLED.match(message)) is not None:
        message = message[len(m["path"]) + 2:]
    return message


def fail(exc: ToolError):
    """One clear line on stderr, and the exit code the error carries."""
    echo(f"error: {one_line(str(exc))}", err=True)
    sys.exit(exc.exit_code)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum, signal.Signals(signum).name)


def _exit_interrupted(line: str, code: int):
    echo(f"error: {line}; nothing was kept", err=True)
    if "mindspore" not in sys.modules and any(m.startswith("mindspore._c_expression") for m in sys.modules):
        # the signal cut `import mindspore` short: MindSpore's exit handlers would then abort the interpreter
        # with a C++ error and a core dump, so leave without them (the writers have cleaned up already)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@contextmanager
def interruptible():
    """SIGTERM raises ``Interrupted`` (SIGINT raises KeyboardInterrupt already), so every ``with`` block that
    writes cleans up on the way out; either ends as one line and exit 130 (SIGINT) or 143 (SIGTERM)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if main else None
    try:
        yield
    except KeyboardInterrupt:
        _exit_interrupted("interrupted by SIGINT", 128 + signal.SIGINT)
    except Interrupted as exc:
        _exit_interrupted(str(exc), exc.exit_code)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


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
