"""The standard checks of every registered view on its component's tiny model (``network_runner``): parameter
table, fp32 parity in PYNATIVE and GRAPH mode, fp16 compute against fp32 torch, batch > 1, output shape and dtype;
and the check that no registered component or view is left without a tiny model."""
from __future__ import annotations

import pytest

from pixart_core import registry

from .network_runner import TINY, check_parameter_table, check_view


def test_every_component_and_view_has_a_tiny_model():
    assert set(TINY) == set(registry.COMPONENTS)
    assert {registry.view(v).component for v in registry.VIEWS} <= set(TINY)
    assert len(registry.VIEWS) >= len(registry.COMPONENTS) > 0


@pytest.mark.parametrize("component", list(registry.COMPONENTS))
def test_parameter_table(component, tiny_models):
    check_parameter_table(component, tiny_models[component])


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("view", list(registry.VIEWS))
def test_view_against_torch(view, dtype, ms_mode, tiny_models):
    check_view(view, tiny_models[registry.view(view).component], dtype)
