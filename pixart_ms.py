"""The ``pixart-ms`` command: a click group of the packages' commands.

Importing it costs neither torch nor MindSpore: each command checks its arguments and paths first and imports the
heavy libraries only when the work needs them, so a usage error answers at once.
"""
from __future__ import annotations

from pixart_core.cli import interruptible, quiet_mindspore

quiet_mindspore()  # before anything imports MindSpore

import click  # noqa: E402

from converters.cli import convert_command, verify_command  # noqa: E402
from mindir_export.cli import export_command, infer_command, validate_command  # noqa: E402
from parity.cli import parity_command  # noqa: E402
from pixart_demo.cli import demo_command  # noqa: E402


class Group(click.Group):
    def invoke(self, ctx):
        with interruptible():  # SIGINT / SIGTERM: the writers clean up, then one line and exit 130 / 143
            return super().invoke(ctx)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pixart-mindspore")
def main():
    """PixArt-Sigma from PyTorch to MindSpore and MindSpore Lite: convert, verify, parity, export, infer, demo."""


main.add_command(convert_command)
main.add_command(verify_command)
main.add_command(parity_command)
main.add_command(export_command)
main.add_command(infer_command)
main.add_command(validate_command)
main.add_command(demo_command)

if __name__ == "__main__":
    main()
