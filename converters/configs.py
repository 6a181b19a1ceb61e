"""The target config of a conversion: what the source folder says, what ``--config`` / ``--sample-size`` say, and
what the weights themselves tell (a component's ``config_from_source`` hook in the registry). Sigma's traps are
fixed explicitly in what we write (``use_additional_conditions: false``, an explicit ``interpolation_scale``)."""
from __future__ import annotations

from pixart_core import registry
from pixart_core.errors import ConfigError, SourceError, UsageError, located

from .detect import Job, config_component, read_json

PIXART_HEAD_DIM = 72  # every released PixArt (XL/2) uses 16 heads of 72
# latent sample sizes of the released PixArt-Sigma checkpoints (256, 512, 1024, 2K pixels); any other needs the
# architecture from a --config (a tiny test model, a custom training)
RELEASED_SAMPLE_SIZES = (32, 64, 128, 256)


def check_sample_size(sample_size: int | None, config_given: bool) -> None:
    """``--sample-size``: one of the released sizes, or with ``--config`` any positive even size."""
    if sample_size is None:
        return
    if sample_size <= 0 or sample_size % 2:
        raise UsageError(f"--sample-size {sample_size}: must be a positive multiple of the patch size 2")
    if sample_size not in RELEASED_SAMPLE_SIZES and not config_given:
        raise UsageError(f"--sample-size {sample_size}: the released PixArt-Sigma models use "
                         f"{'/'.join(map(str, RELEASED_SAMPLE_SIZES))} (256/512/1024/2K px); another size needs "
                         "--config with the model's architecture")


def read_given_config(config_path, component: str | None = None) -> dict:
    """A ``--config`` file: readable JSON, and not the config of another component."""
    data = read_json(config_path)
    found = config_component(data)
    if found is not None and component is not None and found[0] != component:
        article = "an" if found[1][:1].upper() in "AEIOU" else "a"
        raise ConfigError(f"{config_path}: describes {article} {found[1]} ({found[0]}), not a {component}")
    return data


def resolve_config(job: Job, config_path=None, sample_size: int | None = None):
    """(config object, config dict to write, notes for the summary)."""
    component = registry.component(job.component)
    notes: list[str] = []
    data = dict(job.source_config or {})
    if config_path is not None:
        data.update(read_given_config(config_path, job.component))
        notes.append(f"config from {config_path}")
    if component.config_from_source:
        data = registry.load(component.config_from_source)(job, data, sample_size, notes,
                                                           given=bool(job.source_config or config_path))
    elif not data:
        raise SourceError(f"{job.path}: {component.needs_config}")
    try:
        config = component.config_type().from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise SourceError(located(config_path or job.path, str(exc))) from exc
    written = {k: v for k, v in data.items() if not k.startswith("_")}
    written.update(config.to_dict())
    if component.writes_class_name:
        written = {"_class_name": component.class_name, **written}
    return config, written, notes


def pixart_config(job: Job, data: dict, sample_size, notes, given: bool) -> dict:
    infos = job.source.infos
    if registry.layout(job.layout).shapes_from_weights and not given:
        data.update(_pixart_shapes(job))
        notes.append(f"architecture read from the weights: {data['num_layers']} layers, hidden "
                     f"{data['num_attention_heads'] * PIXART_HEAD_DIM}, {data['num_attention_heads']} heads of "
                     f"{PIXART_HEAD_DIM} (pass --config if the head count differs)")
    if sample_size is not None:
        data["sample_size"] = sample_size
    elif "sample_size" not in data:
        pos = infos.get("pos_embed")
        patch = data.get("patch_size", 2)
        if pos is None:
            raise SourceError(f"{job.path}: the sample size cannot be read from the weights (no pos_embed buffer); "
                              "pass --sample-size (32/64/128/256 for 256/512/1024/2K) or --config")
        side = round(pos.shape[-2] ** 0.5)
        data["sample_size"] = side * patch
        notes.append(f"sample_size {data['sample_size']} from the pos_embed buffer ({pos.shape[-2]} tokens)")
    if data.get("interpolation_scale") is None:
        # the original code's pe_interpolation = image_size / 512 = sample_size / 64 (0.5/1/2/4 for 256..2K)
        data["interpolation_scale"] = data["sample_size"] / 64
        notes.append(f"interpolation_scale {data['interpolation_scale']:g} for sample_size {data['sample_size']}")
    if data.get("use_additional_conditions") is None:
        data["use_additional_conditions"] = False
    return data


def _pixart_shapes(job: Job) -> dict:
    infos = job.source.infos
    try:
        hidden, in_channels, patch, _ = infos["x_embedder.proj.weight"].shape
        out_rows = infos["final_layer.linear.weight"].shape[0]
        caption = infos["y_embedder.y_proj.fc1.weight"].shape[1]
    except KeyError as exc:
        raise SourceError(f"{job.path}: cannot read the architecture: missing {exc.args[0]}") from exc
    depth = len({k.split(".")[1] for k in infos if k.startswith("blocks.")})
    if hidden % PIXART_HEAD_DIM:
        raise SourceError(f"{job.path}: hidden size {hidden} is not a multiple of {PIXART_HEAD_DIM}; "
                          "pass --config with num_attention_heads")
    return {"num_attention_heads": hidden // PIXART_HEAD_DIM, "attention_head_dim": PIXART_HEAD_DIM,
            "in_channels": in_channels, "out_channels": out_rows // (patch * patch), "patch_size": patch,
            "num_layers": depth, "caption_channels": caption, "cross_attention_dim": hidden}
