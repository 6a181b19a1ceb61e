"""Session fixtures: tiny random models built with the torch references and saved in the real source layouts,
their conversions through the CLI, and the execution-mode fixture."""
from __future__ import annotations

from pixart_core.cli import quiet_mindspore

quiet_mindspore()  # before MindSpore is imported

import mindspore as ms  # noqa: E402
import pytest  # noqa: E402

from pixart_demo.tiny import save_pixart_diffusers, save_pixart_original, save_tiny_pipeline  # noqa: E402

from .helpers import run_cli  # noqa: E402  (also importable from here, as older test modules do)
from .network_runner import TINY  # noqa: E402


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def tiny_models():
    """The runner's tiny torch model of every component (seed 0), shared: read them, never change them."""
    return {name: tiny.build(seed=0) for name, tiny in TINY.items()}


@pytest.fixture(scope="session")
def pixart_model(tiny_models):
    return tiny_models["transformer"]


@pytest.fixture(scope="session")
def t5_model(tiny_models):
    return tiny_models["text_encoder"]


@pytest.fixture(scope="session")
def vae_model(tiny_models):
    return tiny_models["vae"]


@pytest.fixture(scope="session")
def pixart_diffusers_dir(pixart_model, workdir):
    return save_pixart_diffusers(pixart_model, workdir / "pixart-diffusers")


@pytest.fixture(scope="session")
def pixart_pth(pixart_model, workdir):
    return save_pixart_original(pixart_model, workdir / "pixart-original.pth")


@pytest.fixture(scope="session")
def converted_pixart(pixart_diffusers_dir, pixart_pth, workdir):
    """Both source layouts converted through the CLI: {"diffusers": folder, "pth": folder}."""
    out = {}
    for name, args in (("diffusers", [pixart_diffusers_dir]),
                       ("pth", [pixart_pth, "--config", pixart_diffusers_dir / "config.json"])):
        folder = workdir / f"ms-pixart-{name}"
        result = run_cli("convert", *args, "-o", folder)
        assert result.exit_code == 0, result.output
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def tiny_pipeline(workdir):
    """A tiny diffusers pipeline folder, its conversion, and the torch models: (src, out, models)."""
    src = workdir / "pipeline-src"
    models = save_tiny_pipeline(src)
    out = workdir / "pipeline-ms"
    result = run_cli("convert", src, "-o", out)
    assert result.exit_code == 0, result.output
    return src, out, models


@pytest.fixture(params=["pynative", "graph"])
def ms_mode(request):
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)
