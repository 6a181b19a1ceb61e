"""The networks loaded one tensor at a time, so loading costs the weights plus the largest tensor.

``mindspore_nets.loading.load_network`` reads the whole weights file into a dict of tensors and then copies each
into the network: twice the weights at its peak. Export validation at real scale cannot afford that, so here the
network is built with uninitialised parameters and each is ``set_data`` from the weights file, cast to the
parameter's dtype, one at a time. The torch reference of a big component is built the same way from the
converted weights (our names are the torch classes' names), instead of being rebuilt from the source through the
key map in memory (about three fp32 copies).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pixart_core import dtypes, registry
from pixart_core.manifests import find_weights

from .streaming import WeightReader


def weights_file(view: str, folder: Path) -> Path:
    return find_weights(Path(folder), registry.component(registry.view(view).component).weights_stem)


def config_object(view: str, folder: Path, num_layers: int | None = None):
    """The network config of a converted folder; ``num_layers`` keeps only the first blocks (a depth proxy)."""
    entry = registry.component(registry.view(view).component)
    config = entry.config_type().from_json(Path(folder) / "config.json")
    if num_layers is not None:
        config = dataclasses.replace(config, num_layers=num_layers)
    return config


def skeleton(view: str, folder: Path, dtype: str, num_layers: int | None = None):
    """(network, its view Cell) with parameters declared but never allocated: what is traced."""
    from mindspore.nn.utils import no_init_parameters

    from mindspore_nets.layers import to_ms_dtype

    cls = registry.component(registry.view(view).component).network_class()
    with no_init_parameters():
        net = cls(config_object(view, folder, num_layers), dtype=to_ms_dtype(dtype))
    net.set_train(False)
    return net, registry.view(view).cell(net)


def parameter_names(net) -> dict[str, str]:
    """Parameter.name (what a graph stores) -> the name in the weights file (the network's attribute path)."""
    return {param.name: name for name, param in net.parameters_and_names()}


def load_network(view: str, folder: Path, dtype: str, num_layers: int | None = None):
    """(network, its view Cell) with the parameters the view uses read from the converted weights file one at a
    time; the rest stay declared only (the VAE decoder uses 189 of the network's 320 MiB)."""
    import mindspore as ms

    net, cell = skeleton(view, folder, dtype, num_layers)
    uses = registry.view(view).uses
    reader = WeightReader(weights_file(view, folder))
    try:
        for name, param in net.parameters_and_names():
            if not uses(name):
                continue
            param.set_data(ms.from_numpy(reader.read(name, dtypes.name_of_ms(param.dtype))))  # no copy
    finally:
        reader.close()
    return net, cell


def torch_reference(view: str, folder: Path):
    """The fp32 torch reference class holding the converted weights the view uses, assigned one tensor at a time
    over its uninitialised (meta) parameters (peak: those fp32 weights plus the largest tensor)."""
    import torch

    from converters.detect import read_json

    entry = registry.component(registry.view(view).component)
    config = read_json(Path(folder) / "config.json")
    model = meta_model(entry, config)
    if model is None:  # buffers computed at construction that the entry cannot recompute: build it for real
        model = entry.torch_model(config)
    model = model.float().eval()
    expected = {name for name in model.state_dict() if registry.view(view).uses(name)}
    reader = WeightReader(weights_file(view, folder))
    try:
        loaded = set()
        for name in reader.source.infos:
            if name not in expected:
                continue
            value = torch.from_numpy(reader.read(name, "float32"))
            model.load_state_dict({name: value}, strict=False, assign=True)
            loaded.add(name)
    finally:
        reader.close()
    missing = expected - loaded - set(entry.tied_in_torch) - non_persistent(model)
    if missing:
        from pixart_core.errors import SourceError

        raise SourceError(f"{folder}: the torch reference class has tensors the weights lack: {sorted(missing)[:5]}")
    if entry.tied_in_torch:
        model.tie_weights()
    return model


def meta_model(entry, config: dict):
    """The torch reference class built on the meta device (no initialisation, no memory), with the buffers its
    construction computes put back from ``entry.torch_buffers``; None when some computed buffer cannot be."""
    import torch

    with torch.device("meta"):
        model = entry.torch_model(config)
    computed = non_persistent(model)
    buffers = entry.torch_buffers(model) if computed and entry.torch_buffers else {}
    if set(buffers) != computed:
        return None
    for name, value in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).register_buffer(leaf, value, persistent=False)
    return model


def non_persistent(model) -> set[str]:
    return {f"{prefix}{'.' if prefix else ''}{name}" for prefix, module in model.named_modules()
            for name in getattr(module, "_non_persistent_buffers_set", ())}


def block_prefix(view: str) -> str | None:
    """The module path of the view's repeated blocks (the registry's ``{n}`` parity tap), e.g. ``encoder.block``."""
    taps = [t for t in registry.view(view).taps if t.endswith(".{n}")]
    return taps[0][: -len(".{n}")] if taps else None


def torch_streamed_reference(view: str, folder: Path):
    """The fp32 torch reference built on the meta device whose repeated blocks hold their weights only while they
    run: a pre-hook assigns a block's tensors from the converted file, a hook returns them to the meta device.
    Everything else (embeddings, norms) is resident. Peak: those plus one fp32 block. None when the class cannot be
    built on the meta device (buffers computed at construction that ``meta_model`` cannot restore) or has no
    repeated blocks."""
    import torch

    from converters.detect import read_json

    entry = registry.component(registry.view(view).component)
    prefix = block_prefix(view)
    model = meta_model(entry, read_json(Path(folder) / "config.json"))
    if prefix is None or model is None:
        return None
    model = model.float().eval()
    reader = WeightReader(weights_file(view, folder))
    names = set(model.state_dict())

    def assign(module, module_prefix: str) -> None:
        for name in [n for n, _ in module.named_parameters()]:
            full = f"{module_prefix}{name}"
            if full in reader.source.infos:
                module.load_state_dict({name: torch.from_numpy(reader.read(full, "float32"))}, strict=False,
                                       assign=True)

    blocks = model.get_submodule(prefix)
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: assign(m, f"{prefix}.{i}."))
        block.register_forward_hook(lambda m, args, out: m.to_empty(device="meta") and None)
    resident = [n for n in names if not n.startswith(f"{prefix}.")]
    for name in resident:
        if name in reader.source.infos:
            model.load_state_dict({name: torch.from_numpy(reader.read(name, "float32"))}, strict=False, assign=True)
    if entry.tied_in_torch:
        model.tie_weights()
    model.weights_reader = reader  # closed with the process
    return model
