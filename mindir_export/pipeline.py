"""Offline text-to-image from an export folder alone: no torch, no converted weights, no diffusers.

The loop is diffusers' ``PixArtSigmaPipeline`` with numpy around the graphs:

1. text: ``prompt.lower().strip()`` (diffusers' preprocessing with ``clean_caption=False``), sentencepiece pieces
   + EOS, truncated to ``max_length`` keeping EOS last, padded with the pad id (0); mask 1 on pieces and EOS.
   This equals transformers' ``T5Tokenizer(padding="max_length", truncation=True)`` (tests check it).
2. the text-encoder graph on ``[negative] * N + [prompt] * N`` (B = 2N, one call).
3. latents ``np.random.default_rng(seed).standard_normal((N, C, h, w)) * init_noise_sigma``: numpy's generator,
   so the noise (and the image) differs from diffusers' ``torch.Generator`` for the same seed.
4. per step: the transformer graph on ``[latents, latents]``, guidance ``uncond + g * (cond - uncond)``, the
   first C channels kept (learned sigma dropped), the numpy ``DPMSolverMultistep`` step.
5. the VAE decoder graph on ``latents / scaling_factor``; ``(x / 2 + 0.5).clip(0, 1)``, ``* 255``, rounded.

The bucket (graph) is chosen by ``--height/--width``, which must be one of the exported sizes (no resizing).
The graphs are the export's MindIR graphs (MindSpore Lite, MindSpore ``GraphCell``) or its ONNX graphs
(onnxruntime), by the backend.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindspore_nets.metrics import psnr as metrics_psnr
from pixart_core import registry
from pixart_core.errors import ToolError, UsageError
from pixart_core.manifests import file_problems, read_manifest
from pixart_core.outputs import atomic_files, check_output_file

from .runtime import DESCRIPTION, FORMAT_OF, BackendError, EagerRunner, Runner, open_graph, resolve_backend


class InferError(ToolError):
    """An export folder that cannot serve the request (missing component, size, tokenizer): exit 2."""


# image formats by file extension (Pillow's names); the extension decides, as Pillow's own save does
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}


class T5Tokens:
    """T5 tokenization with sentencepiece only: pieces + EOS, truncated keeping EOS, padded, with a mask."""

    def __init__(self, model_file: Path, max_length: int):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.max_length = max_length
        self.eos = self.sp.eos_id()
        self.pad = max(self.sp.pad_id(), 0)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), self.max_length), self.pad, np.int32)
        mask = np.zeros((len(texts), self.max_length), np.int32)
        for row, text in enumerate(texts):
            pieces = self.sp.encode(text.lower().strip())[: self.max_length - 1] + [self.eos]
            ids[row, : len(pieces)] = pieces
            mask[row, : len(pieces)] = 1
        return ids, mask


@dataclass
class Request:
    prompt: str
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    steps: int = 20
    guidance: float = 4.5
    seed: int = 0


class OfflinePipeline:
    """The exported graphs (or any runners with their calling convention) plus tokenizer and scheduler."""

    def __init__(self, export_dir, backend: str = "auto", runners: dict[str, Runner] | None = None):
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir, "export")
        self.p = self.manifest["pipeline"]
        self.overrides = dict(runners or {})
        self.backend = backend
        self.fmt = "mindir"
        if len(self.overrides) < 3:
            try:
                self.backend = resolve_backend(backend, export_formats(self.manifest))
            except BackendError as exc:
                raise InferError(str(exc)) from None
            self.fmt = FORMAT_OF[self.backend]
            if self.fmt not in export_formats(self.manifest):
                raise InferError(f"{self.dir}: the export has no {self.fmt.upper()} graphs for --backend "
                                 f"{self.backend}; re-export with --format {self.fmt} (or --format mindir,onnx)")
        self._cache: dict[tuple[str, str], Runner] = {}
        self._checked: set[str] = set()
        for name in ("transformer", "text_encoder", "vae_decoder"):
            if name not in self.manifest["components"] and name not in self.overrides:
                raise InferError(f"{self.dir}: the export has no {name} (exported: "
                                 f"{', '.join(self.manifest['components']) or 'nothing'}); re-export with it")
            if name not in self.overrides:
                for graph in self.manifest["components"][name]["graphs"]:
                    for rel in self.graph_files(graph):  # a split graph: its variables too
                        if not (self.dir / rel).is_file():
                            raise InferError(f"{self.dir / rel}: {name} graph missing from the export")
        tokenizer = self.p.get("tokenizer")
        if not tokenizer or not (self.dir / tokenizer).is_file():
            raise InferError(f"{self.dir}: missing tokenizer/spiece.model (the export copies the pipeline's "
                             "tokenizer/ folder)")
        scheduler = self.p.get("scheduler")
        if not scheduler or not (self.dir / scheduler).is_file():
            raise InferError(f"{self.dir}: missing scheduler/scheduler_config.json")
        self.tokens = T5Tokens(self.dir / tokenizer, self.p["max_length"])
        vocab = self.p.get("vocab_size")
        if vocab is not None and self.tokens.vocab_size > vocab:
            raise InferError(f"{self.dir / tokenizer}: the tokenizer has {self.tokens.vocab_size} pieces but the "
                             f"exported text encoder embeds only {vocab} ids")
        self.scheduler_file = self.dir / scheduler

    # -- graphs
    def bucket(self, height: int | None, width: int | None) -> tuple[str, int, int]:
        buckets = self.p["buckets"]
        if not buckets:
            raise InferError(f"{self.dir}: no buckets were exported")
        sizes = ", ".join(f"{b['height']}x{b['width']}" for b in buckets.values())
        if (height is None) != (width is None):
            raise InferError("give both --height and --width, or neither")
        if height is None:
            key = "1.0" if "1.0" in buckets else next(iter(buckets))
        else:
            key = next((k for k, b in buckets.items() if (b["height"], b["width"]) == (height, width)), None)
            if key is None:
                raise InferError(f"{self.dir}: no exported bucket is {height}x{width}; exported sizes "
                                 f"(height x width): {sizes}")
        return key, buckets[key]["height"], buckets[key]["width"]

    def graph_for(self, component: str, bucket: str | None = None) -> dict:
        graphs = self.manifest["components"][component]["graphs"]
        if bucket is None:
            return graphs[0]
        for graph in graphs:
            if bucket in graph["buckets"]:
                return graph
        raise InferError(f"{self.dir}: {component} has no graph for bucket {bucket}")

    def graph_files(self, graph: dict) -> list[str]:
        """Every file of a graph in the format the backend loads (the graph file first)."""
        if self.fmt == "onnx":
            return graph["onnx"]["files"]
        return graph.get("files") or [graph["file"]]

    def runner(self, component: str, bucket: str | None = None) -> Runner:
        if component in self.overrides:
            return self.overrides[component]
        graph = self.graph_for(component, bucket)
        key = (component, graph["stem"])
        if key not in self._cache:
            try:
                lite_path = self.lite_file(graph)
                path = lite_path or self.dir / self.graph_files(graph)[0]
                if not path.is_file():
                    raise InferError(f"{path}: graph file missing from the export")
                if lite_path is None:
                    self.check_files(graph)
                fp16 = self.manifest["components"][component]["dtype"] == "fp16"
                self._cache[key] = open_graph(path, self.backend, fp16=fp16)
            except BackendError as exc:
                raise InferError(str(exc)) from None
        return self._cache[key]

    def check_files(self, graph: dict) -> None:
        """The graph's files against the export manifest (size, sha256) before MindSpore reads them: a damaged
        file is named here instead of failing inside ``mindspore.load``."""
        if graph["stem"] in self._checked:
            return
        names = self.graph_files(graph)
        listed = self.manifest.get("files", {})
        problems = file_problems(self.dir, listed, [n for n in names if n in listed])
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InferError(f"{problems[0]}{more}; re-export or restore the file")
        self._checked.add(graph["stem"])

    def lite_file(self, graph: dict) -> Path | None:
        """The Lite-converted graph (``convert_lite.sh`` output) when using Lite and it exists."""
        if self.backend != "lite":
            return None
        component = graph["file"].split("/")[0]
        for name in (f"{graph['stem']}.mindir", f"{graph['stem']}_graph.mindir"):
            path = self.dir / "lite" / component / name
            if path.is_file():
                return path
        return None

    # -- the loop
    def __call__(self, request: Request, progress: bool = True) -> np.ndarray:
        """(N, H, W, 3) uint8 images."""
        from tqdm import tqdm

        from mindspore_nets.scheduler import DPMSolverMultistep

        check_request(request)
        bucket, height, width = self.bucket(request.height, request.width)
        n = self.p["batch"]
        ids, mask = self.tokens([request.negative_prompt] * n + [request.prompt] * n)
        embeds = self.runner("text_encoder").run(ids, mask)[0].astype(np.float32)
        caption_mask = mask.astype(np.float32)

        scale = self.p["vae_scale_factor"]
        channels = self.p["latent_channels"]
        scheduler = DPMSolverMultistep.from_json(self.scheduler_file)
        scheduler.set_timesteps(request.steps)
        rng = np.random.default_rng(request.seed)
        latents = (rng.standard_normal((n, channels, height // scale, width // scale))
                   * scheduler.init_noise_sigma).astype(np.float32)
        transformer = self.runner("transformer", bucket)
        for t in tqdm(scheduler.timesteps, desc="denoising", disable=not progress, file=sys.stderr,
                      dynamic_ncols=True):
            model_in = np.concatenate([latents, latents])
            timestep = np.full((2 * n,), t, np.float32)
            out = transformer.run(model_in, timestep, embeds, caption_mask)[0].astype(np.float32)
            uncond, cond = out[:n], out[n:]
            noise = uncond + np.float32(request.guidance) * (cond - uncond)
            if out.shape[1] // 2 == channels:  # learned sigma
                noise = noise[:, :channels]
            latents = scheduler.step(noise, t, latents)
        decoded = self.runner("vae_decoder", bucket).run(
            (latents / np.float32(self.p["scaling_factor"])).astype(np.float32))[0].astype(np.float32)
        images = np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        return (images * 255).round().astype(np.uint8)

    def backends(self) -> list[str]:
        return sorted({r.backend for r in [*self._cache.values(), *self.overrides.values()]})


def export_formats(manifest: dict) -> set[str]:
    """The graph formats an export folder holds (``file``: MindIR graphs; an ``onnx`` section: ONNX graphs)."""
    graphs = [g for entry in manifest["components"].values() for g in entry["graphs"]]
    return {fmt for fmt, key in (("mindir", "file"), ("onnx", "onnx")) if any(key in g for g in graphs)}


def image_paths(image_path: Path, count: int) -> list[Path]:
    """The first image at ``image_path``, any others as ``<stem>-<i><suffix>`` beside it."""
    image_path = Path(image_path)
    return [image_path if i == 0 else image_path.with_name(f"{image_path.stem}-{i}{image_path.suffix}")
            for i in range(count)]


def check_image_paths(image_path, count: int, inputs=(), overwrite: bool = False) -> list[Path]:
    """The image file names are usable (a known extension, no folder or symlink in the way, an existing image
    only with ``--overwrite``): checked before any work."""
    image_path = Path(image_path)
    if image_path.suffix.lower() not in IMAGE_FORMATS:
        raise UsageError(f"-o {image_path}: unknown image type {image_path.suffix or '(no extension)'}; use one of "
                         f"{', '.join(IMAGE_FORMATS)}")
    return [check_output_file(p, inputs, overwrite) for p in image_paths(image_path, count)]


def save_images(images: np.ndarray, image_path: Path, log=None) -> list[Path]:
    """Each image written beside its target, fsynced and renamed into place (``image_paths`` names them)."""
    from PIL import Image

    paths = image_paths(image_path, len(images))
    fmt = IMAGE_FORMATS[Path(image_path).suffix.lower()]
    with atomic_files(paths, images.nbytes, log) as temps:
        for image, tmp in zip(images, temps):
            Image.fromarray(image).save(tmp, format=fmt)
    return paths


def check_request(request: Request) -> None:
    if request.steps < 1:
        raise UsageError(f"--steps must be >= 1 (got {request.steps})")
    if not math.isfinite(request.guidance):
        raise UsageError(f"--guidance {request.guidance}: must be a finite number")
    if (request.height is None) != (request.width is None):
        raise UsageError("give both --height and --width, or neither")


def infer(export_dir, prompt: str, image_path, negative_prompt: str = "", height: int | None = None,
          width: int | None = None, steps: int = 20, guidance: float = 4.5, seed: int = 0, backend: str = "auto",
          progress: bool = True, overwrite: bool = False, log=None) -> dict:
    """Text to image from the export folder alone; returns a JSON-able summary (paths, bucket, backends). Every
    argument (the image names, the request, the export folder and its bucket) is checked before any graph is
    loaded; ``log`` hears which backend runs."""
    request = Request(prompt, negative_prompt, height, width, steps, guidance, seed)
    check_request(request)
    manifest = read_manifest(export_dir, "export")
    check_image_paths(image_path, manifest["pipeline"]["batch"], overwrite=overwrite)
    pipe = OfflinePipeline(export_dir, backend=backend)
    bucket, h, w = pipe.bucket(height, width)
    for component, key in (("text_encoder", None), ("transformer", bucket), ("vae_decoder", bucket)):
        graph = pipe.graph_for(component, key)
        if pipe.lite_file(graph) is None:
            pipe.check_files(graph)
    if log is not None:
        log(f"backend: {DESCRIPTION[pipe.backend]}")
    images = pipe(request, progress=progress)
    paths = save_images(images, image_path, log)
    return {"images": [str(p) for p in paths], "bucket": bucket, "height": h, "width": w, "steps": steps,
            "guidance": guidance, "seed": seed, "backend": pipe.backends()}


# ----------------------------------------------------------------------------------------------------------------
# the same loop on the eager MindSpore networks (the reference the offline image is compared with)

def eager_pipeline(export_dir, converted_dir) -> OfflinePipeline:
    """The offline loop with the eager MindSpore networks of a converted pipeline folder (each in the dtype the
    export recorded) as executors instead of the graphs."""
    from mindspore_nets.loading import load_network

    manifest = read_manifest(export_dir, "export")
    converted_dir = Path(converted_dir)
    runners = {}
    for name in ("transformer", "text_encoder", "vae_decoder"):
        view = registry.view(name)
        dtype = manifest["components"].get(name, {}).get("dtype", "fp32")
        runners[name] = EagerRunner(view.cell(load_network(name, converted_dir / view.component, dtype)))
    return OfflinePipeline(export_dir, runners=runners)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    return metrics_psnr(a, b, peak=255.0)
