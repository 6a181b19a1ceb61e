"""mindspore_nets.scheduler.DPMSolverMultistep (numpy) against diffusers' DPMSolverMultistepScheduler (torch)."""

import json
import warnings

import numpy as np
import pytest

from mindspore_nets.scheduler import PIXART_SIGMA_SCHEDULER_CONFIG, DPMSolverMultistep

from .helpers import run_python

# What PixArt-alpha/PixArt-Sigma-XL-2-1024-MS/scheduler/scheduler_config.json holds (the hub file), in the
# shape diffusers writes it, bookkeeping and no-op fields included.
PIXART_SIGMA_HUB_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": "0.22.0.dev0",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

SHAPE = (2, 4, 16, 16)  # small latent batch: the scheduler is elementwise, so size only adds runtime


def _rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def diffusers_scheduler_cls():
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DPMSolverMultistepScheduler


def test_train_schedule_tables_match(diffusers_scheduler_cls):
    ref = diffusers_scheduler_cls.from_config(PIXART_SIGMA_HUB_CONFIG)
    ours = DPMSolverMultistep.from_config(PIXART_SIGMA_HUB_CONFIG)
    # bit-exact: torch.linspace (FMA) and torch.cumprod (float64 accumulation) are emulated
    np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    # sigmas: ours use the correctly rounded sqrt, torch's float32 sqrt is sometimes 1 ulp off
    ref_sigmas = ref.sigmas.numpy()
    assert ours.train_sigmas.dtype == np.float32
    ulp = np.abs(ours.train_sigmas.view(np.int32).astype(np.int64) - ref_sigmas.view(np.int32).astype(np.int64))
    assert ulp.max() <= 1


@pytest.mark.parametrize("num_steps", [20, 15, 14, 5, 1])
def test_step_matches_diffusers(diffusers_scheduler_cls, num_steps):
    import torch

    ref = diffusers_scheduler_cls.from_config(PIXART_SIGMA_HUB_CONFIG)
    ours = DPMSolverMultistep.from_config(PIXART_SIGMA_HUB_CONFIG)
    ref.set_timesteps(num_steps)
    ours.set_timesteps(num_steps)

    assert ours.timesteps.dtype == np.int64
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.timesteps[0] == 999
    assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=2.5e-7, atol=0)
    assert ours.sigmas[-1] == 0.0  # final_sigmas_type "zero"

    rng = np.random.default_rng(1234 + num_steps)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    eps_list = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(num_steps)]

    x_ref = torch.from_numpy(x0.copy())
    x_ours = x0.copy()
    errors = []
    for i, t in enumerate(ours.timesteps):
        x_ref = ref.step(torch.from_numpy(eps_list[i]), torch.tensor(t), x_ref).prev_sample
        x_ours = ours.step(eps_list[i], t, x_ours)
        assert x_ours.dtype == np.float32 and x_ours.shape == SHAPE
        errors.append(_rel_l2(x_ours, x_ref.numpy()))
    print(f"\n[{num_steps} steps] per-step rel L2 vs diffusers: max {max(errors):.3e}, final {errors[-1]:.3e}")
    assert max(errors) <= 1e-6, errors
    assert ours.step_index == ref.step_index == num_steps
    assert ours.lower_order_nums == ref.lower_order_nums


def test_state_resets_and_is_reproducible():
    sched = DPMSolverMultistep()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    eps = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(6)]

    def run():
        sched.set_timesteps(6)
        y = x.copy()
        for e, t in zip(eps, sched.timesteps):
            y = sched.step(e, t, y)
        return y

    first = run()
    assert sched.step_index == 6 and sched.lower_order_nums == 2
    with pytest.raises(IndexError):
        sched.step(eps[0], sched.timesteps[-1], first)
    np.testing.assert_array_equal(run(), first)  # set_timesteps clears model_outputs / step index
    sched.reset()
    assert sched.step_index is None and sched.lower_order_nums == 0
    assert sched.model_outputs == [None, None]


def test_step_requires_set_timesteps():
    with pytest.raises(ValueError, match="set_timesteps"):
        DPMSolverMultistep().step(np.zeros(4, np.float32), 999, np.zeros(4, np.float32))


def test_from_json_and_bookkeeping_keys(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(PIXART_SIGMA_HUB_CONFIG, indent=2))  # lambda_min_clipped -> -Infinity
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # _class_name/_diffusers_version and no-op fields: no warning
        a = DPMSolverMultistep.from_json(path)
        b = DPMSolverMultistep.from_json(tmp_path)  # a scheduler/ directory works too
    a.set_timesteps(20)
    b.set_timesteps(20)
    np.testing.assert_array_equal(a.timesteps, b.timesteps)
    assert a.config == b.config
    assert a.config["lambda_min_clipped"] == float("-inf")
    assert set(PIXART_SIGMA_SCHEDULER_CONFIG) <= set(a.config)


@pytest.mark.parametrize(
    "field,value",
    [
        ("algorithm_type", "sde-dpmsolver++"),
        ("solver_order", 3),
        ("solver_type", "heun"),
        ("beta_schedule", "scaled_linear"),
        ("prediction_type", "v_prediction"),
        ("timestep_spacing", "trailing"),
        ("use_karras_sigmas", True),
        ("final_sigmas_type", "sigma_min"),
        ("thresholding", True),
        ("lower_order_final", False),
        ("beta_end", 0.012),
        ("variance_type", "learned_range"),
    ],
)
def test_unsupported_config_value_raises(field, value):
    with pytest.raises(ValueError, match=field) as info:
        DPMSolverMultistep.from_config({**PIXART_SIGMA_HUB_CONFIG, field: value})
    assert repr(value) in str(info.value)


def test_error_names_every_bad_field():
    with pytest.raises(ValueError) as info:
        DPMSolverMultistep({"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True, "trained_betas": [0.1] * 4})
    msg = str(info.value)
    for field in ("algorithm_type", "use_karras_sigmas", "trained_betas"):
        assert field in msg


def test_diffusers_aliases_and_unknown_keys():
    # diffusers itself rewrites algorithm_type "deis" -> dpmsolver++ and solver_type "bh2" -> midpoint
    DPMSolverMultistep({"algorithm_type": "deis", "solver_type": "bh2"})
    with pytest.warns(UserWarning, match="clip_sample"):
        DPMSolverMultistep({"clip_sample": False})


def test_sampling_module_is_torch_free():
    proc = run_python(
        "import mindspore_nets.scheduler as s\n"
        "sch = s.DPMSolverMultistep(); sch.set_timesteps(3)\n"
        "import numpy as np\n"
        "x = np.ones((1, 4, 2, 2), np.float32)\n"
        "for t in sch.timesteps: x = sch.step(np.zeros_like(x), t, x)\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    assert proc.returncode == 0, proc.stderr
