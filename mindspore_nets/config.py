"""Configs of the three networks, read from the diffusers / transformers ``config.json`` they ship with.

Each config keeps the source's field names so a folder's ``config.json`` round-trips; ``from_dict`` ignores
bookkeeping keys (``_class_name``, ``_diffusers_version``, ...) and rejects values our networks cannot compute.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pixart_core.errors import ConfigError  # noqa: F401  (re-exported: raised by every validate())


def _known_fields(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class _Config:
    @classmethod
    def from_dict(cls, data: dict):
        cfg = cls(**_known_fields(cls, data))
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, path):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        pass


# interpolation_scale of each released PixArt-Sigma resolution, keyed by latent sample_size
SIGMA_INTERPOLATION_SCALE = {32: 0.5, 64: 1.0, 128: 2.0, 256: 4.0}


@dataclasses.dataclass
class PixArtConfig(_Config):
    """diffusers ``PixArtTransformer2DModel`` config (Sigma: ada_norm_single, no micro-conditions).

    ``kv_compress_*`` and ``qk_norm`` are ours: the original code's optional attention variants, which diffusers
    cannot express. ``kv_compress_layers`` lists the blocks whose self-attention keys/values are compressed.
    """

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = 8
    num_layers: int = 28
    dropout: float = 0.0
    norm_num_groups: int = 32
    cross_attention_dim: int | None = 1152
    attention_bias: bool = True
    sample_size: int = 128
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = 1000
    upcast_attention: bool = False
    norm_type: str = "ada_norm_single"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None
    use_additional_conditions: bool | None = False
    caption_channels: int = 4096
    attention_type: str = "default"
    kv_compress_layers: list[int] = dataclasses.field(default_factory=list)
    kv_compress_scale_factor: int = 1
    kv_compress_sampling: str = "conv"
    qk_norm: bool = False

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def base_size(self) -> int:
        return self.sample_size // self.patch_size

    @property
    def pos_interpolation_scale(self) -> float:
        if self.interpolation_scale is not None:
            return float(self.interpolation_scale)
        # diffusers' own fallback; wrong for Sigma-256, which is why converters always write the value explicitly
        return float(max(self.sample_size // 64, 1))

    def sr_ratio(self, layer: int) -> int:
        return self.kv_compress_scale_factor if layer in self.kv_compress_layers else 1

    def validate(self) -> None:
        if self.norm_type != "ada_norm_single":
            raise ConfigError(f"norm_type {self.norm_type!r}: only PixArt's 'ada_norm_single' is supported")
        if self.use_additional_conditions:
            raise ConfigError("use_additional_conditions=true (PixArt-alpha micro-conditions) is not PixArt-Sigma")
        if self.activation_fn != "gelu-approximate":
            raise ConfigError(f"activation_fn {self.activation_fn!r}: PixArt uses 'gelu-approximate'")
        if self.cross_attention_dim not in (None, self.hidden_size):
            raise ConfigError("cross_attention_dim must equal num_attention_heads * attention_head_dim")
        if self.kv_compress_layers:
            if self.kv_compress_sampling != "conv":
                raise ConfigError(f"kv_compress_sampling {self.kv_compress_sampling!r}: only 'conv' is supported")
            if self.kv_compress_scale_factor < 2:
                raise ConfigError("kv_compress_layers given but kv_compress_scale_factor < 2")
            bad = [i for i in self.kv_compress_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ConfigError(f"kv_compress_layers {bad} outside 0..{self.num_layers - 1}")


@dataclasses.dataclass
class T5Config(_Config):
    """transformers ``T5Config`` fields the encoder needs (T5 v1.1: gated-gelu, untied relative bias)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    dense_act_fn: str | None = None
    is_gated_act: bool | None = None
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act(self) -> str:
        name = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if name == "gelu" else name

    def validate(self) -> None:
        if self.act not in ("gelu_new", "relu"):
            raise ConfigError(f"feed_forward_proj {self.feed_forward_proj!r}: only (gated-)gelu and relu are supported")


@dataclasses.dataclass
class VAEConfig(_Config):
    """diffusers ``AutoencoderKL`` config."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: list[str] = dataclasses.field(default_factory=lambda: ["DownEncoderBlock2D"] * 4)
    up_block_types: list[str] = dataclasses.field(default_factory=lambda: ["UpDecoderBlock2D"] * 4)
    block_out_channels: list[int] = dataclasses.field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 1024
    scaling_factor: float = 0.13025
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def validate(self) -> None:
        if self.act_fn != "silu":
            raise ConfigError(f"act_fn {self.act_fn!r}: only 'silu' is supported")
        if any(t != "DownEncoderBlock2D" for t in self.down_block_types):
            raise ConfigError(f"down_block_types {self.down_block_types}: only DownEncoderBlock2D is supported")
        if any(t != "UpDecoderBlock2D" for t in self.up_block_types):
            raise ConfigError(f"up_block_types {self.up_block_types}: only UpDecoderBlock2D is supported")
