"""Load folders written by ``pixart-ms convert`` in mindone 0.5 and print what happened as JSON on stdout.

Runs in the subprocess of ``tests/test_mindone_load.py``, with the mindone install folder (``install.sh``) first
on PYTHONPATH, then this folder (``cpu_shim``); the test asserts on the JSON:

    python check_load.py --pipeline PIPELINE_DIR --transformer TRANSFORMER_DIR

For each component folder of the pipeline, and for the extra transformer folder (the ``.pth`` route, which keeps
``caption_projection.y_embedding``): mindone's ``from_pretrained(..., output_loading_info=True)``, which missing
keys are tied to a loaded Parameter (same object, other name), and every network parameter compared with the
file's tensor (values, shape, dtype); the file read by ``mindspore.load_checkpoint(format="safetensors")`` too.
Then ``PixArtSigmaPipeline.from_pretrained(PIPELINE_DIR)`` and the same comparison on its components.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
_STDOUT, sys.stdout = sys.stdout, sys.stderr  # mindone / transformers print banners on stdout; keep it for JSON

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402

ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")

import cpu_shim  # noqa: E402

PATCHED = cpu_shim.install()

import mindone  # noqa: E402
from mindone.diffusers import AutoencoderKL, PixArtSigmaPipeline, PixArtTransformer2DModel  # noqa: E402
from mindone.transformers import T5EncoderModel  # noqa: E402

CLASSES = {"transformer": PixArtTransformer2DModel, "text_encoder": T5EncoderModel, "vae": AutoencoderKL}


def file_tensors(folder: Path) -> tuple[dict, list]:
    tensors, metadata = {}, []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            metadata.append(f.metadata())
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors, metadata


def tied(model, keys) -> dict:
    """key -> the name of the loaded Parameter that the key's attribute path holds, for keys that are such a
    tie (mindone's T5 lists ``encoder.embed_tokens.weight`` as newly initialized although it is ``shared``)."""
    by_name = dict(model.parameters_and_names())
    out = {}
    for key in keys:
        obj = model
        try:
            for part in key.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, ms.Parameter) and obj.name != key and by_name.get(obj.name) is obj:
            out[key] = obj.name
    return out


def compare(model, tensors: dict) -> dict:
    params = dict(model.parameters_and_names())
    differ = [n for n, p in params.items()
              if n in tensors and (p.shape != tensors[n].shape or p.asnumpy().dtype != tensors[n].dtype
                                   or not np.array_equal(p.asnumpy(), tensors[n]))]
    return {"parameters": len(params), "equal": sum(1 for n in params if n in tensors) - len(differ),
            "differ": differ, "not_in_file": sorted(set(params) - set(tensors)),
            "not_in_network": sorted(set(tensors) - set(params))}


def check_component(folder: Path, name: str) -> dict:
    tensors, metadata = file_tensors(folder)
    model, info = CLASSES[name].from_pretrained(str(folder), output_loading_info=True)
    loaded = {}
    for path in sorted(folder.glob("*.safetensors")):
        loaded.update(ms.load_checkpoint(str(path), format="safetensors"))
    return {"metadata": metadata,
            "loading_info": {k: [str(x) for x in v] for k, v in info.items()},
            "tied": tied(model, info["missing_keys"]),
            "compare": compare(model, tensors),
            "load_checkpoint_differs": sorted(k for k, v in tensors.items()
                                              if k not in loaded or not np.array_equal(loaded[k].asnumpy(), v))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--transformer", required=True)
    args = ap.parse_args()
    pipeline = Path(args.pipeline)
    report = {"mindone": mindone.__version__, "shim": PATCHED, "components": {}}
    for name in CLASSES:
        report["components"][name] = check_component(pipeline / name, name)
    report["transformer_pth_route"] = check_component(Path(args.transformer), "transformer")
    pipe = PixArtSigmaPipeline.from_pretrained(str(pipeline))
    report["pipeline"] = {name: compare(getattr(pipe, name), file_tensors(pipeline / name)[0]) for name in CLASSES}
    report["pipeline_classes"] = {k: type(v).__name__ for k, v in pipe.components.items()}
    print(json.dumps(report, indent=1), file=_STDOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
