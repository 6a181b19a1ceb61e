"""The ``pixart-ms`` command: a click group of the packages' commands."""
from __future__ import annotations

from pixart_core.cli import quiet_mindspore

quiet_mindspore()  # before anything imports MindSpore

import click  # noqa: E402

from converters.cli import convert_command, verify_command  # noqa: E402
from mindir_export.cli import export_command, infer_command  # noqa: E402
from parity.cli import parity_command  # noqa: E402
from pixart_demo.cli import demo_command  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pixart-mindspore")
def main():
    """PixArt-Sigma from PyTorch to MindSpore and MindSpore Lite: convert, verify, parity, export, infer, demo."""


main.add_command(convert_command)
main.add_command(verify_command)
main.add_command(parity_command)
main.add_command(export_command)
main.add_command(infer_command)
main.add_command(demo_command)

if __name__ == "__main__":
    main()
