"""Sampling parity: the same guided DPM-Solver++ denoising run on both sides from the same weights and noise.

torch side: the torch references of a converted pipeline, diffusers' ``DPMSolverMultistepScheduler``.
MindSpore side: our networks and the numpy ``mindspore_nets.scheduler.DPMSolverMultistep``.
Both take the same token ids (one tokenizer, so only the numerics differ), the same initial noise, and classifier-
free guidance over the batch [negative, prompt] as diffusers' PixArt-Sigma pipeline does; the learned-variance
channels are dropped. Reported: per-step latent relative L2, final latent relative L2, decoded image PSNR.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.references import load_reference
from pixart_core.errors import CheckFailed
from mindspore_nets.metrics import psnr, rel_l2
from mindspore_nets.scheduler import DPMSolverMultistep

SAMPLING_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1}


def to_image(decoded: np.ndarray) -> np.ndarray:
    return np.clip(decoded / 2 + 0.5, 0.0, 1.0)


def tokenize(tokenizer_dir: Path, texts, max_length: int):
    """diffusers' PixArt-Sigma text handling without caption cleaning: lower-case, strip, pad to max_length."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    enc = tok([t.lower().strip() for t in texts], padding="max_length", max_length=max_length, truncation=True,
              add_special_tokens=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def sampling_parity(src, out, prompt: str = "a small red fox in the snow", negative: str = "", steps: int = 20,
                    guidance: float = 4.5, seed: int = 0, max_length: int = 300, dtype: str = "fp32",
                    height: int | None = None, width: int | None = None, tolerance: float | None = None) -> dict:
    import mindspore as ms
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from converters.references import torch_forward
    from mindspore_nets.loading import load_network

    from .cases import latent_size, ms_forward

    src, out = Path(src), Path(out)
    refs = {name: load_reference(out / name, src / name) for name in ("text_encoder", "transformer", "vae")}
    nets = {name: load_network(comp, out / name, dtype)
            for name, comp in (("text_encoder", "text_encoder"), ("transformer", "transformer"), ("vae", "vae_decoder"))}
    ids, mask = tokenize(src / "tokenizer", [negative, prompt], max_length)
    text = {"input_ids": ids, "attention_mask": mask}
    emb_torch = torch_forward("text_encoder", refs["text_encoder"], text)
    emb_ms = ms_forward("text_encoder", nets["text_encoder"], text)

    tcfg = refs["transformer"].config
    vae_cfg = refs["vae"].config
    vae_scale = 2 ** (len(vae_cfg.block_out_channels) - 1)
    h, w = latent_size(dict(tcfg), height, width, vae_scale=vae_scale)
    noise = np.random.default_rng(seed).standard_normal((1, tcfg.in_channels, h, w)).astype(np.float32)

    def guided(eps: np.ndarray) -> np.ndarray:
        uncond, cond = eps[:1], eps[1:]
        eps = uncond + guidance * (cond - uncond)
        return eps[:, : tcfg.in_channels]  # learned variance dropped

    torch_sched = DPMSolverMultistepScheduler.from_pretrained(str(src / "scheduler"))
    torch_sched.set_timesteps(steps)
    np_sched = DPMSolverMultistep.from_json(out / "scheduler" / "scheduler_config.json")
    np_sched.set_timesteps(steps)
    if not np.array_equal(np_sched.timesteps, torch_sched.timesteps.numpy()):
        raise CheckFailed(f"{out / 'scheduler'}: the numpy and diffusers schedulers disagree on the timesteps")
    lat_t = torch.from_numpy(noise) * torch_sched.init_noise_sigma
    lat_m = noise * np_sched.init_noise_sigma
    per_step = []
    for t in np_sched.timesteps:
        step_t = np.full(2, float(t), np.float32)
        eps_t = torch_forward("transformer", refs["transformer"], {
            "hidden_states": np.concatenate([lat_t.numpy()] * 2), "timestep": step_t,
            "encoder_hidden_states": emb_torch, "encoder_attention_mask": mask.astype(np.float32)})
        lat_t = torch_sched.step(torch.from_numpy(guided(eps_t)), int(t), lat_t).prev_sample
        eps_m = ms_forward("transformer", nets["transformer"], {
            "hidden_states": np.concatenate([lat_m] * 2).astype(np.float32), "timestep": step_t,
            "encoder_hidden_states": emb_ms, "encoder_attention_mask": mask.astype(np.float32)})
        lat_m = np_sched.step(guided(eps_m), t, lat_m)
        per_step.append(rel_l2(lat_m, lat_t.numpy()))
    scaling = float(vae_cfg.scaling_factor)
    image_t = to_image(torch_forward("vae_decoder", refs["vae"], {"latent": lat_t.numpy() / scaling}))
    image_m = to_image(ms_forward("vae_decoder", nets["vae"], {"latent": (lat_m / scaling).astype(np.float32)}))
    tolerance = SAMPLING_TOLERANCE[dtype] if tolerance is None else tolerance
    final = per_step[-1]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return {"prompt": prompt, "negative_prompt": negative, "steps": steps, "guidance": guidance, "seed": seed,
            "latent_shape": list(noise.shape), "per_step_rel_l2": per_step, "final_latent_rel_l2": final,
            "image_psnr_db": psnr(image_m, image_t), "tolerance": tolerance,
            "ok": bool(final <= tolerance and np.isfinite(lat_m).all())}
