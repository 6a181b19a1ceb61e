"""PixArt aspect-ratio bucket tables (pure data + numpy-free helpers, safe for the torch-free offline runner).

Source tables (the original PixArt-sigma ``diffusion/data/datasets/utils.py`` and diffusers' ``pixart_alpha``
pipeline module):

* ``ASPECT_RATIO_1024``: the original PixArt-Sigma table (``diffusion/data/datasets/utils.py``), 40 entries,
  key = height/width as a string, value = (height, width) in pixels (multiples of 64).
* ``ASPECT_RATIO_512`` / ``ASPECT_RATIO_256`` are that table divided by 2 / 4, ``ASPECT_RATIO_2048`` multiplied
  by 2. They are derived here, not retyped.
* diffusers' resolution-binning tables: ``ASPECT_RATIO_{256,512,1024}_BIN`` are the original ``*_TEST`` subsets
  (33 entries: the 40 minus 0.26, 0.27, 2.89, 3.11, 3.62, 3.75, 3.88), while ``ASPECT_RATIO_2048_BIN`` is the
  full 40-entry 2048 table.

The pipeline picks a BIN table by ``transformer.config.sample_size`` (latent side): 32 -> 256, 64 -> 512,
128 -> 1024, 256 -> 2048. ``bucket_table``/``closest_bucket`` reproduce that choice and diffusers'
``PixArtImageProcessor.classify_height_width_bin`` (``min(keys, key=|float(k) - h/w|)``, first key on ties).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = [
    "ASPECT_RATIO_256",
    "ASPECT_RATIO_512",
    "ASPECT_RATIO_1024",
    "ASPECT_RATIO_2048",
    "ASPECT_RATIO_256_BIN",
    "ASPECT_RATIO_512_BIN",
    "ASPECT_RATIO_1024_BIN",
    "ASPECT_RATIO_2048_BIN",
    "SAMPLE_SIZE_TO_RESOLUTION",
    "TEST_EXCLUDED_RATIOS",
    "bucket_table",
    "closest_bucket",
    "parse_buckets",
    "latent_hw",
    "model_buckets",
    "select_buckets",
]

# Original ASPECT_RATIO_1024 ("ratio:HxW"), in the original's (ascending) order. Order matters: on a tie,
# min() returns the first key, exactly as in diffusers.
_ASPECT_RATIO_1024_SPEC = """
0.25:512x2048 0.26:512x1984 0.27:512x1920 0.28:512x1856 0.32:576x1792 0.33:576x1728 0.35:576x1664
0.4:640x1600 0.42:640x1536 0.48:704x1472 0.5:704x1408 0.52:704x1344 0.57:768x1344 0.6:768x1280
0.68:832x1216 0.72:832x1152 0.78:896x1152 0.82:896x1088 0.88:960x1088 0.94:960x1024 1.0:1024x1024
1.07:1024x960 1.13:1088x960 1.21:1088x896 1.29:1152x896 1.38:1152x832 1.46:1216x832 1.67:1280x768
1.75:1344x768 2.0:1408x704 2.09:1472x704 2.4:1536x640 2.5:1600x640 2.89:1664x576 3.0:1728x576
3.11:1792x576 3.62:1856x512 3.75:1920x512 3.88:1984x512 4.0:2048x512
"""

# Ratios missing from the original *_TEST tables and hence from diffusers' 256/512/1024 BIN tables.
TEST_EXCLUDED_RATIOS = ("0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88")

# transformer.config.sample_size (latent side) -> base resolution in pixels (vae_scale_factor 8)
SAMPLE_SIZE_TO_RESOLUTION = MappingProxyType({32: 256, 64: 512, 128: 1024, 256: 2048})


def _parse_spec(spec: str) -> dict[str, tuple[int, int]]:
    table: dict[str, tuple[int, int]] = {}
    for item in spec.split():
        key, hw = item.split(":")
        h, w = (int(v) for v in hw.split("x"))
        if key in table:
            raise AssertionError(f"duplicate bucket {key}")
        table[key] = (h, w)
    return table


def _scaled(table: Mapping[str, tuple[int, int]], num: int, den: int) -> dict[str, tuple[int, int]]:
    out = {}
    for key, (h, w) in table.items():
        if (h * num) % den or (w * num) % den:
            raise AssertionError(f"bucket {key} {h}x{w} is not divisible when scaled by {num}/{den}")
        out[key] = (h * num // den, w * num // den)
    return out


def _without(table: Mapping[str, tuple[int, int]], keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in table.items() if k not in keys}


_1024 = _parse_spec(_ASPECT_RATIO_1024_SPEC)
assert len(_1024) == 40

# Original tables (40 entries each), read-only.
ASPECT_RATIO_1024 = MappingProxyType(_1024)
ASPECT_RATIO_512 = MappingProxyType(_scaled(_1024, 1, 2))
ASPECT_RATIO_256 = MappingProxyType(_scaled(_1024, 1, 4))
ASPECT_RATIO_2048 = MappingProxyType(_scaled(_1024, 2, 1))

# diffusers' resolution-binning tables.
ASPECT_RATIO_256_BIN = MappingProxyType(_without(ASPECT_RATIO_256, TEST_EXCLUDED_RATIOS))
ASPECT_RATIO_512_BIN = MappingProxyType(_without(ASPECT_RATIO_512, TEST_EXCLUDED_RATIOS))
ASPECT_RATIO_1024_BIN = MappingProxyType(_without(ASPECT_RATIO_1024, TEST_EXCLUDED_RATIOS))
ASPECT_RATIO_2048_BIN = MappingProxyType(dict(ASPECT_RATIO_2048))

_BIN_BY_SAMPLE_SIZE = {
    32: ASPECT_RATIO_256_BIN,
    64: ASPECT_RATIO_512_BIN,
    128: ASPECT_RATIO_1024_BIN,
    256: ASPECT_RATIO_2048_BIN,
}


def bucket_table(sample_size: int) -> dict[str, tuple[int, int]]:
    """The diffusers BIN table for a transformer ``sample_size`` (32/64/128/256), as a fresh dict.

    Keys are ratio strings ("1.0", "0.57", ...) in ascending order; values are (height, width) in pixels.
    """
    try:
        table = _BIN_BY_SAMPLE_SIZE[int(sample_size)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"Invalid sample size {sample_size!r}: PixArt bucket tables exist for transformer sample_size "
            + ", ".join(f"{s} ({r}px)" for s, r in SAMPLE_SIZE_TO_RESOLUTION.items())
        ) from None
    return dict(table)


def closest_bucket(height: int, width: int, sample_size: int) -> tuple[str, tuple[int, int]]:
    """The bucket whose ratio is closest to ``height / width`` (diffusers' ``classify_height_width_bin``)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    table = bucket_table(sample_size)
    ar = float(height / width)
    key = min(table.keys(), key=lambda ratio: abs(float(ratio) - ar))
    h, w = table[key]
    return key, (int(h), int(w))


def parse_buckets(spec: str, sample_size: int) -> list[str]:
    """Parse a CLI bucket list: ``"all"`` or comma-separated exact keys such as ``"1.0,0.57"``.

    Keys must be spelled exactly as in the table ("1.0", not "1"); duplicates are dropped, order is kept.
    """
    table = bucket_table(sample_size)
    text = spec.strip()
    if text.lower() == "all":
        return list(table)
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        raise ValueError(f"empty bucket spec {spec!r}: use 'all' or comma-separated ratios, e.g. '1.0,0.57'")
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise ValueError(
            f"unknown bucket(s) {', '.join(repr(k) for k in unknown)} for sample_size {sample_size} "
            f"({SAMPLE_SIZE_TO_RESOLUTION[int(sample_size)]}px); valid: {', '.join(table)}"
        )
    return list(dict.fromkeys(keys))


def latent_hw(bucket_hw: tuple[int, int], vae_scale_factor: int = 8) -> tuple[int, int]:
    """Latent (height, width) for a pixel bucket: ``(h // 8, w // 8)`` like diffusers' ``prepare_latents``."""
    h, w = bucket_hw
    return int(h) // vae_scale_factor, int(w) // vae_scale_factor


def model_buckets(transformer_config: dict, vae_scale: int) -> tuple[dict[str, tuple[int, int]], str]:
    """(ratio -> (height, width) in pixels, how the table was chosen) for a transformer and VAE: the buckets export
    writes graphs for and parity runs at.

    Released models (sample_size 32/64/128/256 with an 8x VAE) get diffusers' resolution-binning table, exactly.
    Any other pair (tiny test models) gets diffusers' 1024 table scaled to ``sample_size * vae_scale`` pixels,
    each side rounded half-up to a multiple of ``patch_size * vae_scale`` (at least one such step), so every
    bucket gives a whole token grid. Different ratios may round to the same size; they then share one graph.
    """
    sample = int(transformer_config["sample_size"])
    if vae_scale == 8 and sample in SAMPLE_SIZE_TO_RESOLUTION:
        return bucket_table(sample), f"diffusers ASPECT_RATIO_{SAMPLE_SIZE_TO_RESOLUTION[sample]}_BIN"
    base = sample * vae_scale
    step = int(transformer_config.get("patch_size", 2)) * vae_scale

    def snap(pixels: int) -> int:
        return max(step, int(pixels * base / 1024 / step + 0.5) * step)

    table = {key: (snap(h), snap(w)) for key, (h, w) in ASPECT_RATIO_1024_BIN.items()}
    return table, (f"diffusers ASPECT_RATIO_1024_BIN scaled to {base}px (sample_size {sample} x vae scale "
                   f"{vae_scale}), sides rounded to multiples of {step}px")


def select_buckets(spec: str, table: dict[str, tuple[int, int]]) -> list[str]:
    """``square`` (the 1.0 bucket), ``all``, or comma-separated keys spelled as in the table ("1.0,0.57")."""
    text = spec.strip()
    if text.lower() == "square":
        return ["1.0"]
    if text.lower() == "all":
        return list(table)
    keys = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not keys:
        raise ValueError(f"empty bucket list {spec!r}: use square, all, or ratios such as 1.0,0.57")
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise ValueError(f"unknown bucket(s) {', '.join(unknown)}; this model's buckets: {', '.join(table)}")
    return keys
