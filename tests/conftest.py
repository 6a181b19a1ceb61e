"""Session fixtures: tiny random models built with the torch references and saved in the real source layouts,
and a helper that runs the ``pixart-ms`` CLI in-process."""
from __future__ import annotations

from pixart_core.cli import quiet_mindspore

quiet_mindspore()  # before MindSpore is imported

import mindspore as ms  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from pixart_demo.tiny import save_pixart_diffusers, save_pixart_original, save_tiny_pipeline, tiny_pixart  # noqa: E402,E501


def run_cli(*args):
    """Invoke ``pixart-ms ARGS``; returns click's Result (exit_code, stdout, stderr)."""
    from pixart_ms import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def pixart_model():
    return tiny_pixart(seed=0)


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
