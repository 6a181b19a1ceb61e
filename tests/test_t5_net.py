"""T5Encoder (MindSpore) against transformers' T5EncoderModel (torch) on tiny random models.

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

from parity.taps import tap_paths
from mindspore_nets.config import T5Config
from mindspore_nets.loading import load_into, parameter_table
from mindspore_nets.t5 import T5Encoder, _clamp_fp16, relative_position_buckets

TIED = "encoder.embed_tokens.weight"  # transformers' tied copy of shared.weight; we hold it once
B, L, REAL = 2, 12, 5  # batch, length, real tokens of the padded second row
FP16_MAX = 65504.0


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(params=["pynative", "graph"])
def mode(request):
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


def tiny_torch_t5(feed_forward_proj: str = "gated-gelu", seed: int = 0):
    torch.manual_seed(seed)
    hf = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                               relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               feed_forward_proj=feed_forward_proj, dropout_rate=0.0, layer_norm_epsilon=1e-6)
    hf._attn_implementation = "eager"
    model = transformers.T5EncoderModel(hf).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # re-randomize everything: norms away from 1, projections ~ 1/sqrt(fan_in)
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith(("q.weight", "k.weight", "v.weight", "o.weight")) or ".DenseReluDense." in name:
                p.copy_(r / math.sqrt(p.shape[1]))
            else:  # shared embedding, relative attention bias table
                p.copy_(r)
    return hf, model


def inputs():
    ids = np.random.RandomState(0).randint(2, 100, (B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    mask[1, REAL:] = 0
    ids[1, REAL:] = 0  # pad id
    return ids, mask


def torch_out(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.last_hidden_state.float().numpy()


def torch_fp16_keep_wo(model):
    """transformers' fp16 layout: everything fp16 except DenseReluDense.wo (``_keep_in_fp32_modules``)."""
    half = copy.deepcopy(model).half()
    for block in half.encoder.block:
        block.layer[-1].DenseReluDense.wo.float()
    return half


def state_numpy(model) -> dict:
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert np.array_equal(sd.pop(TIED), sd["shared.weight"])
    return sd


def ms_net(hf, model, dtype=ms.float32):
    net = T5Encoder(T5Config.from_dict(hf.to_dict()), dtype=dtype)
    load_into(net, state_numpy(model))
    net.set_train(False)
    return net


def ms_out(net, ids, mask):
    return net(ms.Tensor(ids), ms.Tensor(mask)).asnumpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------ names / shapes

@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_parameter_table_matches_transformers(ff):
    hf, model = tiny_torch_t5(ff)
    torch_table = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED}
    ours = parameter_table(T5Encoder, T5Config.from_dict(hf.to_dict()))
    assert {k: v[0] for k, v in ours.items()} == torch_table
    assert all(dtype == ms.float32 for _, dtype in ours.values())
    assert TIED not in ours
    # only block 0 owns the relative attention bias table
    assert [k for k in ours if "relative_attention_bias" in k] == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]


def test_fp16_table_keeps_wo_fp32():
    hf, _ = tiny_torch_t5()
    net = T5Encoder(T5Config.from_dict(hf.to_dict()), dtype=ms.float16)
    dtypes = {name: p.dtype for name, p in net.parameters_and_names()}
    wo = [k for k in dtypes if k.endswith("DenseReluDense.wo.weight")]
    assert len(wo) == hf.num_layers
    assert all(dtypes[k] == ms.float32 for k in wo)
    assert all(d == ms.float16 for k, d in dtypes.items() if k not in wo)


def test_full_size_t5_xxl_table():
    cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu")
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
    torch_table = {k: tuple(v.shape) for k, v in reference.state_dict().items() if k != TIED}
    assert {k: v[0] for k, v in table.items()} == torch_table


def test_module_paths_follow_torch():
    hf, model = tiny_torch_t5()
    net = T5Encoder(T5Config.from_dict(hf.to_dict()))
    torch_paths = {name for name, _ in model.named_modules() if name}
    ours = set(net.module_paths())
    # every torch module with parameters or compute has the same path here (dropouts/act and the tied
    # encoder.embed_tokens are the only torch-only modules)
    torch_only = {p for p in torch_paths - ours
                  if not p.endswith((".dropout", "encoder.dropout", ".act")) and p != "encoder.embed_tokens"}
    assert torch_only == set()
    assert set(tap_paths("text_encoder", ours)) <= ours  # every parity tap is a cell of ours


# ------------------------------------------------------------------------------------------------ numerics fp32

@pytest.mark.parametrize("length", [1, 7, 12, 40, 300])
@pytest.mark.parametrize("buckets,distance", [(8, 16), (32, 128), (32, 32), (64, 256)])
def test_relative_position_buckets_equal_torch(length, buckets, distance):
    ours = relative_position_buckets(length, length, buckets, distance)
    pos = torch.arange(length)
    ref = TorchT5Attention._relative_position_bucket(pos[None, :] - pos[:, None], True, buckets, distance)
    assert ours.dtype == np.int32
    assert np.array_equal(ours, ref.numpy())


@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_fp32_matches_transformers(ff, mode):
    hf, model = tiny_torch_t5(ff)
    ids, mask = inputs()
    ref = torch_out(model, ids, mask)
    out = ms_out(ms_net(hf, model), ids, mask)
    assert out.shape == (B, L, hf.d_model)
    err = rel_l2(out, ref)
    assert err <= 1e-5, f"{ff} {mode}: rel L2 {err:.3e}"
    # each row on its own, so the padded row is held to the same bound
    assert rel_l2(out[1], ref[1]) <= 1e-5


def test_padded_keys_get_no_weight():
    hf, model = tiny_torch_t5()
    net = ms_net(hf, model)
    ids, mask = inputs()
    out = ms_out(net, ids, mask)
    changed = ids.copy()
    changed[1, REAL:] = np.arange(REAL, L) + 10  # different tokens behind the mask
    out2 = ms_out(net, changed, mask)
    np.testing.assert_allclose(out2[1, :REAL], out[1, :REAL], rtol=0, atol=1e-6)
    # unmasked, the same change does move the real positions (the mask is what protects them)
    out3 = ms_out(net, changed, np.ones_like(mask))
    assert np.abs(out3[1, :REAL] - out[1, :REAL]).max() > 1e-3


# ------------------------------------------------------------------------------------------------ numerics fp16

@pytest.mark.parametrize("ff", ["gated-gelu", "relu"])
def test_fp16_matches_fp32_reference(ff):
    hf, model = tiny_torch_t5(ff)
    ids, mask = inputs()
    ref = torch_out(model, ids, mask)
    ref16 = torch_out(torch_fp16_keep_wo(model), ids, mask)
    out = ms_out(ms_net(hf, model, ms.float16), ids, mask)
    assert np.isfinite(out).all()
    assert rel_l2(out, ref) <= 5e-3
    assert rel_l2(out, ref16) <= 5e-3  # and transformers' own fp16 path
    assert rel_l2(out, ref) > 0  # it really ran in fp16


def test_fp16_graph_mode(mode):
    hf, model = tiny_torch_t5()
    ids, mask = inputs()
    net = ms_net(hf, model, ms.float16)
    out = net(ms.Tensor(ids), ms.Tensor(mask))
    assert out.dtype == ms.float16  # final norm casts to its fp16 weight, as transformers does
    assert rel_l2(out.asnumpy().astype(np.float32), torch_out(model, ids, mask)) <= 5e-3


def test_fp16_wo_overflow_stays_finite():
    """FF outputs beyond the fp16 range: a naive fp16 ``wo`` gives inf, ours (wo in fp32) stays accurate."""
    hf, model = tiny_torch_t5("gated-gelu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".DenseReluDense.wi_" in name:
                p.mul_(4.0)
            elif name.endswith("DenseReluDense.wo.weight"):
                p.mul_(3000.0)
    ids, mask = inputs()
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    seen = {}
    hook = wo.register_forward_hook(lambda mod, args, out: seen.update(x=args[0].numpy(), y=out.numpy()))
    ref = torch_out(model, ids, mask)
    hook.remove()
    # the fp32 reference FF output leaves the fp16 range, and the fp16 product of the same numbers is inf
    assert np.abs(seen["y"]).max() > FP16_MAX
    assert np.abs(seen["x"]).max() < FP16_MAX  # the gated product itself still fits in fp16
    with np.errstate(over="ignore"):
        naive = seen["x"].astype(np.float16) @ wo.weight.detach().numpy().T.astype(np.float16)
    assert np.isinf(naive).any()

    out = ms_out(ms_net(hf, model, ms.float16), ids, mask)
    assert np.isfinite(out).all()
    err = rel_l2(out, ref)
    assert err <= 5e-3, f"overflow case: rel L2 {err:.3e}"
    assert rel_l2(out, torch_out(torch_fp16_keep_wo(model), ids, mask)) <= 5e-3
    # whereas an all-fp16 model (wo in fp16) is clamped by transformers but no longer right
    naive_torch = torch_out(copy.deepcopy(model).half(), ids, mask)
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
    hf, model = tiny_torch_t5("gated-gelu")
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.o.weight.mul_(3e4)
    ids, mask = inputs()
    ref16 = torch_out(torch_fp16_keep_wo(model), ids, mask)
    assert np.isfinite(ref16).all()
    out = ms_out(ms_net(hf, model, ms.float16), ids, mask)
    assert np.isfinite(out).all()
    assert rel_l2(out, ref16) <= 1e-2


# ------------------------------------------------------------------------------------------------ from_pretrained

def test_from_pretrained_fp16_folder(tmp_path):
    hf, model = tiny_torch_t5()
    (tmp_path / "config.json").write_text(json.dumps(hf.to_dict()))
    sd = state_numpy(model)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in sd.items()],
                       str(tmp_path / "model.safetensors"), format="safetensors")
    net = T5Encoder.from_pretrained(tmp_path, dtype="fp16")
    assert net.encoder.block[1].layer[1].DenseReluDense.wo.weight.dtype == ms.float32
    assert net.shared.weight.dtype == ms.float16
    ids, mask = inputs()
    assert rel_l2(ms_out(net, ids, mask), torch_out(model, ids, mask)) <= 5e-3
