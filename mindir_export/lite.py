"""MindSpore Lite deployment files: one converter config per graph and ``convert_lite.sh``.

The config's ``[ascend_context]`` names every input with its exported shape, always states ``precision_mode``
(Lite's own default, ``enforce_fp16``, is never left implicit) and, for a gears graph, lists the gears in
``dynamic_dims`` with the dynamic dims as -1 in ``input_shape``. The script runs ``converter_lite`` with
``--fmk=MINDIR --saveType=MINDIR --optimize=ascend_oriented`` per graph; for a static graph it also passes
``--inputShape`` (the converter's own way to pin static shapes). A graph over 1 GiB is given as its
``_graph.mindir``; the converter reads the ``_variables/`` folder beside it and writes the same split pair.

ONNX graphs get the same command with ``--fmk=ONNX`` and the same config file (the input names, shapes and
precision mode are the MindIR graph's); the converter reads ``<stem>.onnx.data`` beside ``<stem>.onnx``. When
both formats are exported the MindIR commands write ``lite/`` (what ``infer`` loads) and the ONNX ones
``lite/onnx/``.
"""
from __future__ import annotations

import configparser
import io
from pathlib import Path

SCRIPT = "convert_lite.sh"
LITE_DIR = "lite"
CONVERTER_FLAGS = ["--fmk=MINDIR", "--saveType=MINDIR", "--optimize=ascend_oriented"]
ONNX_FLAGS = ["--fmk=ONNX", "--saveType=MINDIR", "--optimize=ascend_oriented"]
PRECISION_MODES = ("enforce_fp32", "preferred_fp32", "enforce_fp16", "enforce_origin", "preferred_optimal")


def shape_text(shape, sep: str = ",") -> str:
    return sep.join(str(d) for d in shape)


def config_text(graph, precision_mode: str) -> str:
    if precision_mode not in PRECISION_MODES:
        raise ValueError(f"unknown precision_mode {precision_mode!r}")
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keep key case
    section = {
        "input_format": "NCHW" if graph.gears else "ND",
        "input_shape": ";".join(f"{t.name}:[{shape_text(t.shape)}]" for t in graph.inputs),
        "precision_mode": precision_mode,
    }
    if graph.gears:
        section["dynamic_dims"] = ",".join(f"[{shape_text(g)}]" for g in graph.gears)
    parser["ascend_context"] = section
    buf = io.StringIO()
    parser.write(buf)
    return f"# MindSpore Lite converter config for {graph.stem} (converter_lite --configFile)\n" + buf.getvalue()


def write_config(path: Path, graph, precision_mode: str) -> None:
    Path(path).write_text(config_text(graph, precision_mode))


def read_config(path: Path) -> dict:
    """The ``[ascend_context]`` of a written config, with ``input_shape`` parsed to {name: [dims]}."""
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read(path)
    section = dict(parser["ascend_context"])
    shapes = {}
    for item in section["input_shape"].split(";"):
        name, dims = item.split(":", 1)
        shapes[name] = [int(d) for d in dims.strip("[]").split(",")]
    section["input_shape"] = shapes
    return section


def command(component: str, graph, graph_file: str, flags=CONVERTER_FLAGS, out_dir: str = LITE_DIR) -> list[str]:
    args = ["converter_lite", *flags, f"--modelFile={component}/{graph_file}",
            f"--outputFile={out_dir}/{component}/{graph.stem}", f"--configFile={component}/{graph.stem}.cfg"]
    if not graph.gears:
        args.append('--inputShape="' + ";".join(f"{t.name}:{shape_text(t.shape)}" for t in graph.inputs) + '"')
    return args


def onnx_out_dir(formats) -> str:
    return LITE_DIR if "mindir" not in formats else f"{LITE_DIR}/onnx"


def manifest_section(formats) -> dict:
    section = {"script": SCRIPT, "flags": CONVERTER_FLAGS}
    if "onnx" in formats:
        section.update(onnx_flags=ONNX_FLAGS, onnx_output=onnx_out_dir(formats))
    return section


def write_convert_script(path: Path, specs, formats=("mindir",)) -> None:
    """``convert_lite.sh``: run from anywhere; writes ``lite/<component>/<stem>.mindir`` (or the split pair)."""
    lines = ["#!/usr/bin/env bash",
             "# Convert the exported MindIR graphs for MindSpore Lite on Ascend (run on, or for, the target SoC).",
             "# converter_lite must be the same version as the MindSpore that exported them; CANN >= 7.5.",
             "# Large graphs: the converter reads <name>_variables/ beside <name>_graph.mindir and may need",
             "# several times the weights in host memory.",
             "set -euo pipefail",
             'cd "$(dirname "$0")"']
    if "onnx" in formats:
        lines[1:2] = ["# Convert the exported graphs for MindSpore Lite on Ascend (run on, or for, the target SoC).",
                      f"# ONNX graphs (--fmk=ONNX, weights over 1 GiB in <name>.onnx.data beside them) are converted "
                      f"into {onnx_out_dir(formats)}/."]
    for spec in specs:
        folder = Path(path).parent / spec.name
        if "mindir" in formats:
            lines.append(f"mkdir -p {LITE_DIR}/{spec.name}")
            for graph in spec.graphs:
                graph_file = (f"{graph.stem}_graph.mindir" if (folder / f"{graph.stem}_graph.mindir").is_file()
                              else f"{graph.stem}.mindir")
                lines.append(" ".join(command(spec.name, graph, graph_file)))
        if "onnx" in formats:
            lines.append(f"mkdir -p {onnx_out_dir(formats)}/{spec.name}")
            for graph in spec.graphs:
                lines.append(" ".join(command(spec.name, graph, f"{graph.stem}.onnx", ONNX_FLAGS,
                                              onnx_out_dir(formats))))
    Path(path).write_text("\n".join(lines) + "\n")
    Path(path).chmod(0o755)
