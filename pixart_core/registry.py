"""The component registry: one object per component (``transformer``, ``text_encoder``, ``vae``) holding every fact
about it, and one ``View`` per function of a component that parity compares and export writes (``transformer``,
``text_encoder``, ``vae_encoder``, ``vae_decoder``).

Each component lives in its own module of ``pixart_core.components``; every other module reads from here (the CLI
choice lists included), so adding a component, a source layout or an export view is a change in one place. Heavy
objects (MindSpore networks, torch reference classes, key-map specs) are named as ``"module:attr"`` and imported on
use: importing the registry costs neither torch nor MindSpore.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable

from .errors import UsageError


def load(ref: str):
    """The object a ``"module:attr"`` reference names."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (-1 marks a dimension that varies between Lite gears), dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # canonical dtype name: "float32" | "float16" | "int32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


SOURCE_KINDS = ("torch", "safetensors", "mindspore", "memory")  # who wrote a source file (converters.sources)


@dataclass(frozen=True)
class Layout:
    """A weights layout of a component: its key-map spec (layout names -> our MindSpore names), how a source in it
    is recognised and, for a torch layout that ``convert --to`` writes, how it is written (the same spec inverted).
    """

    name: str
    spec: str  # "module:factory" of the key-map Spec
    sentinels: tuple[str, ...] = ()  # keys that identify a bare weights file in this layout
    config_match: Callable[[dict], bool] | None = None  # recognises the layout's config.json
    folder_weights: tuple[str, ...] = ()  # a folder's weights files, in order of preference
    options: tuple[str, ...] = ()  # keyword options the spec factory takes
    kinds: tuple[str, ...] = SOURCE_KINDS  # source kinds the sentinels are trusted in
    native: bool = False  # our own MindSpore folders (recognised by their manifest, never by sentinels)
    shapes_from_weights: bool = False  # the architecture can be read from the weights (original PixArt names)
    ema_prefix: str = ""  # the prefix of EMA copies inside one file (--ema converts those)
    writes: str = ""  # the ``convert --to`` name this layout is written as ("diffusers", "original")
    output_file: str = ""  # the weights file written (its suffix picks the writer)
    complete: str | None = None  # "module:function(plan, config)": what a written file holds beyond the weights

    def make_spec(self, **options):
        return load(self.spec)(**{k: v for k, v in options.items() if k in self.options})


@dataclass(frozen=True)
class View:
    """One function of a component, with the interface its exported graph has.

    ``interface(config, batch, length, latent_hw, out_dtype) -> (inputs, outputs)`` gives the graph's tensors for
    N = ``batch`` images (the transformer and text encoder take B = 2N: the negative and the positive prompt of
    classifier-free guidance in one call); ``latent_hw`` is the latent grid of a spatial view. ``cell(net)`` is
    the thin MindSpore Cell that is traced (its ``construct`` parameters become the graph's input names);
    ``torch_call(model, arrays)`` the same function on the torch reference, returning fp32 numpy.
    """

    name: str
    component: str
    inputs: tuple[str, ...]  # graph input names, in order (the construct and torch_call arguments)
    output: str
    interface: Callable
    cell: Callable
    torch_call: Callable
    taps: tuple[str, ...]  # parity taps: cell paths ({n} = a block index), in depth order
    spatial: bool  # one graph per latent size (bucket); False: one graph
    lite_precision: dict = field(default_factory=lambda: {"fp32": "preferred_fp32", "fp16": "enforce_origin"})
    fp16_needs_check: bool = False  # exported in fp16 only when its fp16 outputs stay finite (the SDXL VAE)
    # the ONNX route traces the torch reference: ``torch_forward(model, *tensors)`` is ``torch_call`` on torch
    # tensors in graph input order (None: no ONNX graph of this view); ``torch_dynamic_hw(model, max_hw)`` readies
    # the model for one graph with dynamic h, w and returns torch.export's ``dynamic_shapes`` (None: per size only)
    torch_forward: Callable | None = None
    torch_dynamic_hw: Callable | None = None
    # name prefixes of the component parameters the view uses (empty: all); the others are never loaded for it
    parameters: tuple[str, ...] = ()

    def uses(self, name: str) -> bool:
        return not self.parameters or name.startswith(self.parameters)


@dataclass(frozen=True)
class Component:
    """A convertible network: its MindSpore class and config, its folder, its source layouts and its torch twin."""

    name: str  # also its folder name inside a pipeline
    network: str  # "module:Class" of the MindSpore network
    config_class: str  # "module:Class" of its config
    weights_stem: str  # weights file name without suffix (diffusers' / transformers' own)
    class_name: str  # written as _class_name (diffusers) or architectures (transformers) in config.json
    layouts: tuple[Layout, ...]
    views: tuple[str, ...]
    parameter_shapes: Callable  # config object -> {name: shape} of the network's parameters (no MindSpore needed)
    torch_model: Callable  # config dict -> fp32 torch reference module (random weights)
    # the module built on the meta device -> {name: tensor} of the buffers its construction computes (in no file)
    torch_buffers: Callable | None = None
    extras: tuple[str, ...] = ()  # tensors kept beside the parameters (unused at inference)
    tied_in_torch: tuple[str, ...] = ()  # torch-side names of a parameter tied to another
    keep_fp32: tuple[str, ...] = ()  # parameters that stay fp32 when fp16 is asked for
    config_from_source: str | None = None  # "module:function": fills what a bare weights file leaves out
    needs_config: str = ""  # why a bare weights file of this component needs --config (if it does)
    writes_class_name: bool = True  # config.json carries _class_name (diffusers) rather than architectures

    def network_class(self):
        return load(self.network)

    def config_type(self):
        return load(self.config_class)


COMPONENTS: dict[str, Component] = {}
VIEWS: dict[str, View] = {}
LAYOUTS: dict[str, Layout] = {}
LAYOUT_COMPONENT: dict[str, str] = {}


def register(component: Component, *views: View) -> Component:
    """Add a component and its views; a name registered twice is a programming error."""
    if component.name in COMPONENTS:
        raise ValueError(f"component {component.name!r} registered twice")
    if [v.name for v in views] != list(component.views):
        raise ValueError(f"{component.name}: views {[v.name for v in views]} != declared {component.views}")
    COMPONENTS[component.name] = component
    for layout in component.layouts:
        if layout.name in LAYOUTS:
            raise ValueError(f"layout {layout.name!r} registered twice")
        LAYOUTS[layout.name] = layout
        LAYOUT_COMPONENT[layout.name] = component.name
    for view in views:
        _add_view(view)
    return component


def add_view(view: View) -> View:
    """Add one more view to a registered component (another graph of it): export, validation, the Lite files and
    the CLI choices pick it up from here."""
    owner = component(view.component)
    COMPONENTS[owner.name] = dataclasses.replace(owner, views=(*owner.views, view.name))
    return _add_view(view)


def _add_view(view: View) -> View:
    if view.name in VIEWS:
        raise ValueError(f"view {view.name!r} registered twice")
    VIEWS[view.name] = view
    return view


def component(name: str) -> Component:
    try:
        return COMPONENTS[name]
    except KeyError:
        raise UsageError(f"unknown component {name!r}; choose from {', '.join(COMPONENTS)}") from None


def view(name: str) -> View:
    try:
        return VIEWS[name]
    except KeyError:
        raise UsageError(f"unknown component {name!r}; choose from {', '.join(VIEWS)}") from None


def views_of(names) -> list[str]:
    """View names for component or view names (``vae`` -> its encoder and decoder views), registry order."""
    wanted = set()
    for name in names:
        if name in VIEWS:
            wanted.add(name)
        elif name in COMPONENTS:
            wanted.update(COMPONENTS[name].views)
        else:
            raise UsageError(f"unknown component {name!r}; choose from {', '.join([*COMPONENTS, *VIEWS])}")
    return [v for v in VIEWS if v in wanted]


def layout(name: str) -> Layout:
    return LAYOUTS[name]


def native_layout(component_name: str) -> Layout:
    """The layout of our own MindSpore folders of a component."""
    return next(lay for lay in component(component_name).layouts if lay.native)


def written_layout(component_name: str, to: str) -> Layout:
    """The layout ``convert --to TO`` writes for a component; UsageError when it has none."""
    entry = component(component_name)
    for lay in entry.layouts:
        if lay.writes == to:
            return lay
    choices = sorted({lay.writes for lay in entry.layouts if lay.writes} | {"mindspore"})
    raise UsageError(f"--to {to} does not fit a {component_name}: it is written as {', '.join(choices)}")
