"""T5Encoder (MindSpore) against transformers' T5EncoderModel (torch) on tiny random models: what is particular to
T5 beyond the runner's standard checks (``test_networks.py``).

The torch model is the reference: same weights (state dict -> numpy -> ``load_into``), same inputs, relative L2
error asserted. fp16 runs are compared with the fp32 torch output and with transformers' own fp16 path (weights
in fp16, ``wo`` kept in fp32 as ``from_pretrained(torch_dtype=float16)`` does).
"""
from __future__ import annotations

import copy
import json
import math

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5.modeling_t5 import T5Attention as TorchT5Attention

from converters.references import torch_forward
from mindspore_nets.config import T5Config
from mindspore_nets.loading import parameter_table
from mindspore_nets.metrics import rel_l2
from mindspore_nets.t5 import T5Encoder, _clamp_fp16, relative_position_buckets
from parity.cases import ms_forward
from parity.taps import tap_paths
from pixart_demo.tiny import TINY_T5, tiny_t5

from .network_runner import (T5_XXL, check_fp16_parameters, check_parameter_table, check_view, ms_network,
                             t5_inputs, torch_state)

TIED = "encoder.embed_tokens.weight"  # transformers' tied copy of shared.weight; we hold it once
L, REAL = 12, 5  # length, real tokens of the padded second row
FP16_MAX = 65504.0


def inputs() -> dict:
    return t5_inputs(TINY_T5["vocab_size"], length=L, short=REAL)


def torch_out(model, arrays):
    return torch_forward("text_encoder", model, arrays)


def ms_out(net, arrays):
    return ms_forward("text_encoder", net, arrays)


def torch_fp16_keep_wo(model):
    """transformers' fp16 layout: everything fp16 except DenseReluDense.wo (``_keep_in_fp32_modules``)."""
    half = copy.deepcopy(model).half()
    for block in half.encoder.block:
        block.layer[-1].DenseReluDense.wo.float()
    return half


# ------------------------------------------------------------------------------------------------ names / shapes

@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_parameter_table_matches_transformers(ff):
    model = tiny_t5(feed_forward_proj=ff)
    state = model.state_dict()
    assert torch.equal(state[TIED], state["shared.weight"])  # a tied copy, not a parameter of its own
    ours = check_parameter_table("text_encoder", model)  # torch's names and shapes but TIED, all fp32
    assert TIED not in ours
    # only block 0 owns the relative attention bias table
    assert [k for k in ours if "relative_attention_bias" in k] == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]


def test_fp16_table_keeps_wo_fp32():
    net = ms_network("text_encoder", tiny_t5(), "fp16")
    wo = check_fp16_parameters("text_encoder", net)  # the registry's keep_fp32 names fp32, all others fp16
    assert len(wo) == TINY_T5["num_layers"]
    assert all(k.endswith("DenseReluDense.wo.weight") for k in wo)


def test_full_size_t5_xxl_table():
    cfg = T5Config(**T5_XXL)
    table = parameter_table(T5Encoder, cfg)  # no allocation
    d, inner, ff, n = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.num_layers
    per_block_tensors = 4 + 1 + 3 + 1  # q k v o, norm, wi_0 wi_1 wo, norm
    per_block_values = 4 * d * inner + 2 * d + 3 * d * ff
    expected_tensors = 1 + n * per_block_tensors + 1 + 1  # shared, blocks, relative bias, final norm
    expected_values = cfg.vocab_size * d + n * per_block_values + 32 * 64 + d
    assert len(table) == expected_tensors == 219
    assert sum(math.prod(shape) for shape, _ in table.values()) == expected_values == 4_762_310_656
    assert table["shared.weight"][0] == (32128, 4096)
    assert table["encoder.block.23.layer.1.DenseReluDense.wo.weight"][0] == (4096, 10240)
    assert table["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][0] == (32, 64)
    # and the same names/shapes as transformers' own full-size model, built on the meta device (no memory)
    hf = transformers.T5Config(**{k: v for k, v in cfg.to_dict().items() if v is not None})
    with torch.device("meta"):
        reference = transformers.T5EncoderModel(hf)
    assert check_parameter_table("text_encoder", reference) == table


def test_module_paths_follow_torch():
    model = tiny_t5()
    net = ms_network("text_encoder", model)
    torch_paths = {name for name, _ in model.named_modules() if name}
    ours = set(net.module_paths())
    # every torch module with parameters or compute has the same path here (dropouts/act and the tied
    # encoder.embed_tokens are the only torch-only modules)
    torch_only = {p for p in torch_paths - ours
                  if not p.endswith((".dropout", "encoder.dropout", ".act")) and p != "encoder.embed_tokens"}
    assert torch_only == set()
    assert set(tap_paths("text_encoder", ours)) <= ours  # every parity tap is a cell of ours


# ------------------------------------------------------------------------------------------------ numerics

@pytest.mark.parametrize("length", [1, 7, 12, 40, 300])
@pytest.mark.parametrize("buckets,distance", [(8, 16), (32, 128), (32, 32), (64, 256)])
def test_relative_position_buckets_equal_torch(length, buckets, distance):
    ours = relative_position_buckets(length, length, buckets, distance)
    pos = torch.arange(length)
    ref = TorchT5Attention._relative_position_bucket(pos[None, :] - pos[:, None], True, buckets, distance)
    assert ours.dtype == np.int32
    assert np.array_equal(ours, ref.numpy())


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_relu_feed_forward(dtype, ms_mode):
    """The runner's standard checks on T5's other feed-forward (v1.0 relu; the tiny model is v1.1 gated-gelu)."""
    check_view("text_encoder", tiny_t5(feed_forward_proj="relu"), dtype)


def test_padded_keys_get_no_weight():
    net = ms_network("text_encoder", tiny_t5())
    arrays = inputs()
    out = ms_out(net, arrays)
    changed = dict(arrays, input_ids=arrays["input_ids"].copy())
    changed["input_ids"][1, REAL:] = np.arange(REAL, L) + 10  # different tokens behind the mask
    out2 = ms_out(net, changed)
    np.testing.assert_allclose(out2[1, :REAL], out[1, :REAL], rtol=0, atol=1e-6)
    # unmasked, the same change does move the real positions (the mask is what protects them)
    out3 = ms_out(net, dict(changed, attention_mask=np.ones_like(arrays["attention_mask"])))
    assert np.abs(out3[1, :REAL] - out[1, :REAL]).max() > 1e-3


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_fp16_matches_transformers_fp16_path(ff):
    model = tiny_t5(feed_forward_proj=ff)
    arrays = inputs()
    out = ms_out(ms_network("text_encoder", model, "fp16"), arrays)
    assert rel_l2(out, torch_out(torch_fp16_keep_wo(model), arrays)) <= 5e-3


def test_fp16_wo_overflow_stays_finite():
    """FF outputs beyond the fp16 range: a naive fp16 ``wo`` gives inf, ours (wo in fp32) stays accurate."""
    model = tiny_t5()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".DenseReluDense.wi_" in name:
                p.mul_(4.0)
            elif name.endswith("DenseReluDense.wo.weight"):
                p.mul_(3000.0)
    arrays = inputs()
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    seen = {}
    hook = wo.register_forward_hook(lambda mod, args, out: seen.update(x=args[0].numpy(), y=out.numpy()))
    ref = torch_out(model, arrays)
    hook.remove()
    # the fp32 reference FF output leaves the fp16 range, and the fp16 product of the same numbers is inf
    assert np.abs(seen["y"]).max() > FP16_MAX
    assert np.abs(seen["x"]).max() < FP16_MAX  # the gated product itself still fits in fp16
    with np.errstate(over="ignore"):
        naive = seen["x"].astype(np.float16) @ wo.weight.detach().numpy().T.astype(np.float16)
    assert np.isinf(naive).any()

    out = ms_out(ms_network("text_encoder", model, "fp16"), arrays)
    assert np.isfinite(out).all()
    err = rel_l2(out, ref)
    assert err <= 5e-3, f"overflow case: rel L2 {err:.3e}"
    assert rel_l2(out, torch_out(torch_fp16_keep_wo(model), arrays)) <= 5e-3
    # whereas an all-fp16 model (wo in fp16) is clamped by transformers but no longer right
    naive_torch = torch_out(copy.deepcopy(model).half(), arrays)
    assert rel_l2(naive_torch, ref) > 10 * err


def test_clamp_rule():
    inf = np.float16(np.inf)
    with_inf = _clamp_fp16(ms.Tensor(np.array([inf, -inf, 1.5, 65504.0], np.float16))).asnumpy()
    torch_ref = torch.clamp(torch.tensor([np.inf, -np.inf, 1.5, 65504.0], dtype=torch.float16),
                            min=-(FP16_MAX - 1000), max=FP16_MAX - 1000).numpy()
    np.testing.assert_array_equal(with_inf, torch_ref)
    assert with_inf[0] < FP16_MAX and with_inf[2] == np.float16(1.5)
    finite = np.array([65504.0, -65504.0, 3.0], np.float16)
    np.testing.assert_array_equal(_clamp_fp16(ms.Tensor(finite)).asnumpy(), finite)
    big32 = np.array([np.inf, 1e6], np.float32)  # fp32 hidden states are never clamped
    np.testing.assert_array_equal(_clamp_fp16(ms.Tensor(big32)).asnumpy(), big32)


def test_fp16_attention_overflow_is_clamped_like_transformers():
    """Block 0's attention output overflows fp16: both transformers and we clamp to +-64504 and go on."""
    model = tiny_t5()
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(3e4)
    arrays = inputs()
    ref16 = torch_out(torch_fp16_keep_wo(model), arrays)
    assert np.isfinite(ref16).all()
    out = ms_out(ms_network("text_encoder", model, "fp16"), arrays)
    assert np.isfinite(out).all()
    assert rel_l2(out, ref16) <= 1e-2


# ------------------------------------------------------------------------------------------------ from_pretrained

def test_from_pretrained_fp16_folder(tmp_path):
    model = tiny_t5()
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in torch_state("text_encoder", model).items()],
                       str(tmp_path / "model.safetensors"), format="safetensors")
    net = T5Encoder.from_pretrained(tmp_path, dtype="fp16")
    assert net.encoder.block[1].layer[1].DenseReluDense.wo.weight.dtype == ms.float32
    assert net.shared.weight.dtype == ms.float16
    arrays = inputs()
    assert rel_l2(ms_out(net, arrays), torch_out(model, arrays)) <= 5e-3
