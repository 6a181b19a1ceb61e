"""Torch-free numpy port of diffusers' ``DPMSolverMultistepScheduler`` for PixArt-Sigma.

Only the configuration that PixArt-Sigma ships (hub ``scheduler/scheduler_config.json``, which equals the
diffusers class defaults) is implemented:

    algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint", beta_schedule "linear"
    (1e-4 .. 0.02 over 1000 train steps), prediction_type "epsilon", timestep_spacing "linspace",
    lower_order_final True, use_karras_sigmas False, final_sigmas_type "zero", no thresholding.

Any other value raises ``ValueError`` naming the field, so a config that would make diffusers behave
differently can never be sampled silently with the wrong solver.

Numerics follow diffusers 0.42 (``schedulers/scheduling_dpmsolver_multistep.py``):

* ``betas = torch.linspace(..., dtype=float32)``: reproduced bit-exactly. torch's CPU kernel evaluates
  ``start + step*i`` (first half) / ``end - step*(n-1-i)`` (second half) with a fused multiply-add and a
  float32 ``step``; we emulate the FMA in float64 (the product is exact there).
* ``alphas_cumprod = torch.cumprod(1 - betas)``: torch accumulates in float64 on CPU and stores float32;
  reproduced bit-exactly.
* ``sigmas = ((1 - ac) / ac) ** 0.5`` in float32, then sampled at the integer timesteps, plus a final 0.
  Here we use the correctly rounded square root. torch's float32 ``sqrt`` (CPU, the torch 2.13 build used to
  develop this) is *not* always correctly rounded: about 1 entry in 6 of the 1000-entry table differs from
  ours by 1 ulp.
* diffusers does the per-step scalar math (alpha_t, sigma_t, lambda, h, coefficients) on 0-d float32
  tensors. We replay each of those float32 operations in the same order, computed in float64 and rounded to
  float32 after every op. For + - * / and sqrt this is exactly IEEE float32; for log/exp it is the correctly
  rounded value, which torch's float32 kernels hit most (not all) of the time, and which numpy's own float32
  log/exp match less often. (Computing the scalars entirely in float64 is "more accurate" but further from
  diffusers: ``h = lambda_t - lambda_s`` cancels in float32, and diffusers inherits that rounding.)
  Per-element arithmetic is float32 with diffusers' operation order, so it is bit-identical whenever the
  scalars are. Against diffusers, per-step relative L2 differences are about 1e-7 to 3e-7 for 5 to 20 steps
  (tests/test_scheduler.py).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["DPMSolverMultistep", "PIXART_SIGMA_SCHEDULER_CONFIG"]

# Field -> the only supported value. These are diffusers 0.42's DPMSolverMultistepScheduler defaults and the
# PixArt-Sigma hub config.
PIXART_SIGMA_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "thresholding": False,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -math.inf,
    "variance_type": None,
    "timestep_spacing": "linspace",
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
}

# diffusers' DPMSolverMultistepScheduler.__init__ rewrites these legacy values (from DEIS/UniPC configs) in place.
_ALIASES: dict[str, dict[Any, Any]] = {
    "algorithm_type": {"deis": "dpmsolver++"},
    "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
}

# Accepted with any value because they have no effect in the supported configuration:
#   dynamic_thresholding_ratio / sample_max_value -> only with thresholding=True
#   euler_at_final -> the last step is already first order because final_sigmas_type == "zero"
#   steps_offset -> only with timestep_spacing="leading"
#   flow_shift / time_shift_type -> only with use_flow_sigmas / use_dynamic_shifting
_INERT_FIELDS = frozenset(
    {"dynamic_thresholding_ratio", "sample_max_value", "euler_at_final", "steps_offset", "flow_shift", "time_shift_type"}
)


def _same_value(value: Any, supported: Any) -> bool:
    if supported is None:
        return value is None
    if isinstance(supported, bool):
        return isinstance(value, (bool, np.bool_)) and bool(value) == supported
    if isinstance(supported, (int, float)) and not isinstance(supported, bool):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        value = float(value)
        if math.isinf(supported):
            return value == supported
        return math.isclose(value, float(supported), rel_tol=1e-12, abs_tol=0.0)
    return value == supported


def _r32(value: float) -> float:
    """Round a Python float to the nearest float32 (a float32 op computed exactly in float64, then rounded)."""
    return float(np.float32(value))


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """Bit-exact ``torch.linspace(start, end, steps, dtype=torch.float32)`` (CPU kernel with FMA)."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step32 = (end32 - start32) / np.float32(steps - 1)
    idx = np.arange(steps, dtype=np.float64)
    s, e, st = np.float64(start32), np.float64(end32), np.float64(step32)
    out = np.where(idx < steps // 2, s + st * idx, e - st * (steps - 1 - idx))
    return out.astype(np.float32)


class DPMSolverMultistep:
    """numpy ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2, midpoint) restricted to PixArt-Sigma.

    Usage mirrors diffusers::

        sched = DPMSolverMultistep.from_json("scheduler/scheduler_config.json")
        sched.set_timesteps(20)
        latents = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = model(latents, t)          # epsilon prediction (learned-sigma channels already dropped)
            latents = sched.step(eps, t, latents)
    """

    order = 1  # like diffusers: one model call per step

    def __init__(self, config: Mapping[str, Any] | None = None, **overrides: Any):
        cfg = dict(config or {})
        cfg.update(overrides)
        self.config = self._validate(cfg)

        n_train = self.config["num_train_timesteps"]
        self.betas = _torch_linspace_f32(self.config["beta_start"], self.config["beta_end"], n_train)
        self.alphas = (np.float32(1.0) - self.betas).astype(np.float32)
        # torch.cumprod on CPU accumulates float32 inputs in float64
        self.alphas_cumprod = np.cumprod(self.alphas.astype(np.float64)).astype(np.float32)
        # sigma of the train schedule: ((1 - ac) / ac) ** 0.5; the ratio is formed in float32 like diffusers
        ratio32 = ((np.float32(1.0) - self.alphas_cumprod) / self.alphas_cumprod).astype(np.float32)
        self.train_sigmas = np.sqrt(ratio32.astype(np.float64)).astype(np.float32)

        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(n_train - 1, -1, -1, dtype=np.int64)
        self.sigmas = self.train_sigmas.copy()
        self._begin_index: int | None = None
        self.reset()

    # ------------------------------------------------------------------ config
    @classmethod
    def _validate(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        resolved = dict(PIXART_SIGMA_SCHEDULER_CONFIG)
        problems = []
        unknown = []
        for key, value in cfg.items():
            if key.startswith("_"):  # _class_name, _diffusers_version, _use_default_values, ...
                continue
            if key in _INERT_FIELDS:
                resolved[key] = value
                continue
            if key not in PIXART_SIGMA_SCHEDULER_CONFIG:
                unknown.append(key)
                continue
            if isinstance(value, str):
                value = _ALIASES.get(key, {}).get(value, value)
            if key == "trained_betas" and value is not None:
                problems.append(f"trained_betas=<{len(value)} values> (supported: None)")
                continue
            supported = PIXART_SIGMA_SCHEDULER_CONFIG[key]
            if not _same_value(value, supported):
                problems.append(f"{key}={value!r} (supported: {supported!r})")
        if problems:
            raise ValueError(
                "DPMSolverMultistep implements only the PixArt-Sigma DPMSolverMultistepScheduler configuration; "
                "unsupported value(s): " + "; ".join(problems)
            )
        if unknown:
            # diffusers' from_config also ignores unexpected attributes (with a warning)
            warnings.warn(f"DPMSolverMultistep: ignoring unknown scheduler config field(s): {sorted(unknown)}")
        return resolved

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any) -> "DPMSolverMultistep":
        return cls(config, **overrides)

    @classmethod
    def from_json(cls, path: str | Path, **overrides: Any) -> "DPMSolverMultistep":
        path = Path(path)
        if path.is_dir():
            path = path / "scheduler_config.json"
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), **overrides)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Clear the multistep history and step counter (``set_timesteps`` also does this)."""
        self.model_outputs: list[np.ndarray | None] = [None] * self.config["solver_order"]
        self.lower_order_nums = 0
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int) -> None:
        num_inference_steps = int(num_inference_steps)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        # lambda_min_clipped is -inf, so nothing is clipped: last_timestep == num_train_timesteps
        last_timestep = self.config["num_train_timesteps"]
        timesteps = (
            np.linspace(0, last_timestep - 1, num_inference_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        )
        # np.interp at integer points is just a lookup; final_sigmas_type "zero" appends 0
        sigmas = np.concatenate([self.train_sigmas[timesteps].astype(np.float64), [0.0]]).astype(np.float32)

        self.timesteps = timesteps
        self.sigmas = sigmas
        self.num_inference_steps = len(timesteps)
        self._begin_index = None
        self.reset()

    def scale_model_input(self, sample: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return sample

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]

    # ------------------------------------------------------------------ stepping
    def index_for_timestep(self, timestep: Any, schedule_timesteps: np.ndarray | None = None) -> int:
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        candidates = np.nonzero(schedule_timesteps == int(timestep))[0]
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        # diffusers takes the second match for duplicated timesteps (img2img safety)
        return int(candidates[1] if len(candidates) > 1 else candidates[0])

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    @staticmethod
    def _alpha_sigma_lambda(sigma: float) -> tuple[float, float, float]:
        """diffusers' ``_sigma_to_alpha_sigma_t`` plus ``lambda = log(alpha) - log(sigma)``, float32 semantics."""
        s = float(sigma)
        alpha = _r32(1.0 / _r32(math.sqrt(_r32(_r32(s * s) + 1.0))))
        sig = _r32(s * alpha)
        # sigma 0 (the final "zero" sigma): log(0) = -inf, so lambda = +inf, as in torch
        lam = _r32(_r32(math.log(alpha)) - _r32(math.log(sig))) if sig > 0.0 else math.inf
        return alpha, sig, lam

    def _convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        # epsilon -> data prediction (dpmsolver++): x0 = (sample - sigma_t * eps) / alpha_t, float32 element ops
        alpha_t, sigma_t, _ = self._alpha_sigma_lambda(self.sigmas[self._step_index])
        return (sample - np.float32(sigma_t) * model_output) / np.float32(alpha_t)

    def _first_order_update(self, x0: np.ndarray, sample: np.ndarray) -> np.ndarray:
        # x_t = (sigma_t / sigma_s) x - alpha_t (exp(-h) - 1) x0   (DDIM-equivalent)
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(self.sigmas[i])
        h = _r32(lambda_t - lambda_s)  # +inf on the final step; exp(-inf) = 0
        c_sample = np.float32(sigma_t / sigma_s)
        c_x0 = np.float32(alpha_t * _r32(_r32(math.exp(-h)) - 1.0))
        return c_sample * sample - c_x0 * x0

    def _second_order_update(self, sample: np.ndarray) -> np.ndarray:
        # midpoint: x_t = (sigma_t/sigma_s0) x - alpha_t (exp(-h) - 1) D0 - 0.5 alpha_t (exp(-h) - 1) D1
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.sigmas[i])
        _, _, lambda_s1 = self._alpha_sigma_lambda(self.sigmas[i - 1])
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = _r32(lambda_t - lambda_s0), _r32(lambda_s0 - lambda_s1)
        r0 = _r32(h_0 / h)
        d1 = np.float32(1.0 / r0) * (m0 - m1)
        c_sample = np.float32(sigma_t / sigma_s0)
        c = _r32(alpha_t * _r32(_r32(math.exp(-h)) - 1.0))
        return c_sample * sample - np.float32(c) * m0 - np.float32(0.5 * c) * d1

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray) -> np.ndarray:
        """One DPM-Solver++(2M) step: returns the sample at the next (less noisy) timestep.

        ``model_output`` is the epsilon prediction for ``sample`` at ``timestep``. Inputs are computed in float32
        (like diffusers, which upcasts the sample); the result has ``model_output``'s dtype.
        """
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', call 'set_timesteps' first")
        out_dtype = np.asarray(model_output).dtype
        model_output = np.asarray(model_output, dtype=np.float32)
        sample = np.asarray(sample, dtype=np.float32)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} != sample shape {sample.shape}")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= self.num_inference_steps:
            raise IndexError(
                f"step() called {self._step_index + 1} times for {self.num_inference_steps} inference steps; "
                "call set_timesteps() or reset() before sampling again"
            )

        n = len(self.timesteps)
        last = self._step_index == n - 1
        # final_sigmas_type == "zero" makes the last step first order for any step count; lower_order_final
        # with < 15 steps also demotes the second-to-last step, but that only matters for solver_order 3.
        lower_order_final = last and (
            (self.config["lower_order_final"] and n < 15) or self.config["final_sigmas_type"] == "zero"
        )

        x0 = self._convert_model_output(model_output, sample)
        for k in range(self.config["solver_order"] - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x0

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.lower_order_nums < 1 or lower_order_final:
                prev_sample = self._first_order_update(x0, sample)
            else:
                prev_sample = self._second_order_update(sample)

        if self.lower_order_nums < self.config["solver_order"]:
            self.lower_order_nums += 1
        self._step_index += 1
        return prev_sample.astype(out_dtype if np.issubdtype(out_dtype, np.floating) else np.float32, copy=False)
