"""The full-size synthetic sources of ``bench_convert.py`` (random values, real names and shapes), built once into
the work dir and reused while their ``complete.json`` marker matches the files:

- pixart: ``PixArt-Sigma-XL-2-1024-MS.pth``, ``{"state_dict": sd}`` with the 435 parameter tensors of
  PixArtMS_XL_2 plus the ``pos_embed`` and ``y_embedder.y_embedding`` buffers, random fp32 (std 0.02), 2.3 GiB.
- t5: ``text_encoder/``, a T5-v1.1-XXL encoder in the public sharded layout (``model-0000k-of-0000n.safetensors``
  of ~2 GB, ``model.safetensors.index.json``, ``config.json``), random bf16 (std 0.02), with both
  ``shared.weight`` and its tied copy ``encoder.embed_tokens.weight``, 9.1 GiB.

The generators need torch (and transformers for T5): they run as subprocesses (``python bench_sources.py
generate NAME DIR``); this module imports neither torch nor MindSpore otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = 0
STD = 0.02
SHARD_BYTES = 2 * 10**9  # "about 2 GB" per T5 shard, as transformers' max_shard_size="2GB"
PIXART_FILE = "PixArt-Sigma-XL-2-1024-MS.pth"
T5_FOLDER = "text_encoder"
MARKER = "complete.json"

T5_CONFIG = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu")
T5_FORCED = {"is_gated_act": True, "dense_act_fn": "gelu_new", "model_type": "t5",
             "architectures": ["T5EncoderModel"], "tie_word_embeddings": False}

# ----------------------------------------------------------------------------------------------------------------
# generators (subprocesses: they hold up to ~2.5 GB)

def generate_pixart(folder: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from original_pixart import OriginalPixArtMS

    with torch.device("meta"):
        net = OriginalPixArtMS(depth=28, hidden=1152, heads=16, caption_channels=4096, sample_size=128,
                               pe_interpolation=2.0)
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    n_values = sum(p.numel() for p in params.values())
    assert len(params) == 435 and n_values == 610_856_096, (len(params), n_values)
    assert set(buffers) == {"pos_embed", "y_embedder.y_embedding"}, sorted(buffers)
    assert tuple(buffers["pos_embed"].shape) == (1, 4096, 1152)
    assert tuple(buffers["y_embedder.y_embedding"].shape) == (300, 4096)
    gen = torch.Generator().manual_seed(SEED)
    sd = {}
    for name, meta in net.state_dict().items():
        sd[name] = torch.randn(tuple(meta.shape), generator=gen, dtype=torch.float32).mul_(STD)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (PIXART_FILE + ".partial")
    torch.save({"state_dict": sd}, tmp)
    os.replace(tmp, folder / PIXART_FILE)


def t5_meta_state():
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**T5_CONFIG, tie_word_embeddings=False, architectures=["T5EncoderModel"])
    with torch.device("meta"):
        net = T5EncoderModel(config)
    shapes = [(name, tuple(t.shape)) for name, t in net.state_dict().items()]
    data = config.to_dict()
    data.update(T5_FORCED)
    data["dtype"] = "bfloat16"
    return shapes, data


def generate_t5(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    shapes, config = t5_meta_state()
    names = [n for n, _ in shapes]
    assert names[:2] == ["shared.weight", "encoder.embed_tokens.weight"], names[:2]
    numel = {n: _prod(s) for n, s in shapes}
    shards, current, size = [], [], 0
    for name, _ in shapes:
        nbytes = numel[name] * 2
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    shape_of = dict(shapes)
    shared = None  # kept until its tied copy is written (they may fall in different shards)
    weight_map, total = {}, 0
    for k, members in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in members:
            if name == "encoder.embed_tokens.weight":
                tensors[name] = shared.clone()  # the same values; a separate storage (safetensors refuses aliases)
                shared = None
            else:
                tensors[name] = torch.randn(shape_of[name], generator=gen, dtype=torch.bfloat16).mul_(STD)
                if name == "shared.weight":
                    shared = tensors[name]
            weight_map[name] = file
            total += numel[name] * 2
        tmp = folder / (file + ".partial")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / file)
        del tensors
        print(f"wrote {file} ({len(members)} tensors)", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def inspect_source(path: Path) -> dict:
    """Tensor count, values, bytes, dtypes and the largest tensor of a .pth or a sharded safetensors folder, read
    from the files' own headers (the .pth through the project's torch-free reader)."""
    sys.path.insert(0, str(REPO))
    if path.is_dir():
        from converters.sources import safetensors_infos

        files = sorted(path.glob("*.safetensors"))
        infos = [i for f in files for i in safetensors_infos(f).values()]
    else:
        from converters.torch_source import restricted_index

        files, infos = [path], list(restricted_index(path).values())
    largest = max(infos, key=lambda i: i.nbytes)
    return {
        "tensors": len(infos),
        "values": sum(_prod(i.shape) for i in infos),
        "tensor_bytes": sum(i.nbytes for i in infos),
        "dtypes": sorted({i.dtype for i in infos}),
        "largest": {"name": largest.key, "shape": list(largest.shape), "dtype": largest.dtype,
                    "bytes": largest.nbytes,
                    "same_size": sorted(i.key for i in infos if i.nbytes == largest.nbytes and i.key != largest.key)},
        "files": [{"name": f.name, "bytes": f.stat().st_size} for f in files],
        "disk_bytes": sum(f.stat().st_size for f in files),
    }


def source_path(workdir: Path, name: str) -> Path:
    return workdir / "src" / name / {"pixart": PIXART_FILE, "t5": T5_FOLDER}[name]


def ensure_source(workdir: Path, name: str) -> dict:
    """Build the source once; reuse it when its marker says it is complete and every file has its size."""
    folder = workdir / "src" / name
    marker = folder / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        base = source_path(workdir, name)
        base_dir = base if base.is_dir() else base.parent
        if all((base_dir / f["name"]).is_file() and (base_dir / f["name"]).stat().st_size == f["bytes"]
               for f in info["files"]):
            print(f"[{name}] reusing source {base}", flush=True)
            return info
        print(f"[{name}] source incomplete, rebuilding", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"[{name}] generating source in {folder} ...", flush=True)
    started = time.perf_counter()
    target = folder if name == "pixart" else folder / T5_FOLDER
    subprocess.run([sys.executable, __file__, "generate", name, str(target)], check=True)
    seconds = time.perf_counter() - started
    info = inspect_source(source_path(workdir, name))
    info["generated_seconds"] = round(seconds, 1)
    marker.write_text(json.dumps(info, indent=1) + "\n")
    print(f"[{name}] generated in {seconds:.0f} s: {info['tensors']} tensors, {info['disk_bytes'] / 2**30:.2f} GiB",
          flush=True)
    return info


if __name__ == "__main__":
    if sys.argv[1:2] == ["generate"]:
        {"pixart": generate_pixart, "t5": generate_t5}[sys.argv[2]](Path(sys.argv[3]))
    else:
        sys.exit("usage: bench_sources.py generate pixart|t5 DIR")
