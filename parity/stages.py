"""How each network splits into stages for block-streamed parity: embedding, blocks, final layers.

A stage description says where the repeated blocks live (the same path on both sides), how to build one block of
the MindSpore network on its own, and the MindSpore glue around the blocks (the torch side needs none: its own
forward runs, with the blocks loaded one at a time). The glue mirrors the networks' ``construct`` in
``mindspore_nets`` step by step; the streamed-vs-whole parity test fails if the two drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stages:
    blocks: str                      # path of the block list, e.g. "transformer_blocks" (torch and MindSpore alike)
    final_params: tuple              # parameter paths the final stage uses; every other non-block one: embedding
    block_cell: Callable             # (config, index, dtype) -> one MindSpore block, parameters not initialised
    embed: Callable                  # (net, arrays) -> state: the MindSpore inputs of block 0 and of the final stage
    prepare: Callable                # (block, index, state) -> None: what a block adds to the state (T5's bias)
    block_args: Callable             # (state, hidden) -> the block's construct arguments
    # (block) -> (a Cell returning (block output, *tapped sub-cell outputs), their paths relative to the block):
    # the block's own construct step by step, so that one compiled graph yields the taps hooks give in PYNATIVE
    tapped: Callable
    fed: Callable                    # (state, torch args, torch kwargs) -> (state, hidden) from the torch block's inputs
    final: Callable                  # (net, state, hidden) -> output as float32 numpy
    # activation bytes of one forward at most, excluding weights: (config, input shapes, query rows) -> bytes
    activation_bytes: Callable
    # bytes of one block's tapped outputs (held for the comparison in whole-network mode): (config, shapes) -> bytes
    block_tap_bytes: Callable


def _tensor(x):
    import mindspore as ms

    if hasattr(x, "detach"):
        x = x.detach().float().numpy()
    return ms.Tensor(x)


# ---------------------------------------------------------------- transformer (PixArtTransformer2D)

def _pixart_block(config, index, dtype):
    from mindspore_nets.pixart import PixArtBlock

    return PixArtBlock(config, index, dtype)


def _pixart_embed(net, arrays):
    import mindspore as ms

    hidden = _tensor(arrays["hidden_states"])
    p = net.patch_size
    state = {"hw": (hidden.shape[2] // p, hidden.shape[3] // p), "batch": hidden.shape[0]}
    mask = arrays.get("encoder_attention_mask")
    x, state["modulation"], state["embedded_timestep"], state["context"], state["bias"] = net.embed(
        hidden, _tensor(arrays["timestep"]), _tensor(arrays["encoder_hidden_states"]),
        None if mask is None else ms.Tensor(mask))
    return state, x


def _pixart_prepare(block, index, state):
    pass


def _pixart_args(state, hidden):
    h, w = state["hw"]
    return hidden, state["modulation"], state["context"], state["bias"], h, w


def _pixart_tapped(block):
    """``PixArtBlock.construct`` returning the outputs of attn1, attn2 and ff too."""
    from mindspore import nn, ops

    class TappedPixArtBlock(nn.Cell):
        def __init__(self, block):
            super().__init__(auto_prefix=False)
            self.block = block

        def construct(self, x, modulation, context, context_bias, h, w):
            blk = self.block
            b = x.shape[0]
            table = blk.scale_shift_table.reshape(1, 6, -1) + modulation.reshape(b, 6, -1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.split(table, 1, axis=1)
            normed = blk.norm1(x) * (1 + scale_msa) + shift_msa
            attn1 = blk.attn1(normed, h, w)
            x = x + gate_msa * attn1
            attn2 = blk.attn2(x, context, context_bias)
            x = x + attn2
            normed = blk.norm2(x) * (1 + scale_mlp) + shift_mlp
            ff = blk.ff(normed)
            return x + gate_mlp * ff, attn1, attn2, ff

    return TappedPixArtBlock(block), ("", "attn1", "attn2", "ff")


def _pixart_fed(state, args, kwargs):
    """diffusers calls each block as block(hidden, attention_mask=, encoder_hidden_states=, encoder_attention_mask=,
    timestep=): the modulation and the projected caption come from the torch side; the key bias is our own (it
    depends on the mask only)."""
    fed = dict(state, modulation=_tensor(kwargs["timestep"]), context=_tensor(kwargs["encoder_hidden_states"]))
    return fed, _tensor(args[0] if args else kwargs["hidden_states"])


def _pixart_final(net, state, hidden):
    h, w = state["hw"]
    return net.finish(hidden, state["embedded_timestep"], h, w)


def _pixart_activations(config, shapes, query_rows=None):
    b, _, height, width = shapes["hidden_states"]
    n = (height // config.patch_size) * (width // config.patch_size)
    d = config.hidden_size
    rows = min(n, query_rows or n)
    scores = 2 * b * config.num_attention_heads * rows * n * 4  # fp32 scores and probabilities
    return scores + 12 * b * n * 4 * d * 4  # hidden, q/k/v, feed-forward (4d) and taps, fp32


def _pixart_taps(config, shapes):
    b, _, height, width = shapes["hidden_states"]
    return 4 * b * (height // config.patch_size) * (width // config.patch_size) * config.hidden_size * 4


# ---------------------------------------------------------------- text_encoder (T5Encoder)

def _t5_block(config, index, dtype):
    from mindspore_nets.t5 import T5Block

    return T5Block(config, has_relative_attention_bias=(index == 0), dtype=dtype)


def _t5_embed(net, arrays):
    import mindspore as ms

    ids = arrays["input_ids"]
    return {"mask": ms.Tensor(arrays["attention_mask"]), "length": ids.shape[1]}, net.shared(ms.Tensor(ids))


def _t5_prepare(block, index, state):
    """Block 0 owns the relative position table: the bias (position + key mask) every block adds is made there,
    as ``T5Stack.construct`` does."""
    from mindspore_nets.layers import key_mask_bias

    if index == 0:
        position = block.layer[0].SelfAttention.compute_bias(state["length"])
        state["bias"] = position + key_mask_bias(state["mask"])


def _t5_args(state, hidden):
    return hidden, state["bias"]


def _t5_tapped(block):
    return block, ("",)


def _t5_fed(state, args, kwargs):
    """transformers calls ``T5Block(hidden, attention_mask, position_bias, ...)``: the hidden state comes from the
    torch side; the bias is our own, made by our block 0 (it depends on block 0's table and the mask only)."""
    return state, _tensor(args[0] if args else kwargs["hidden_states"])


def _t5_final(net, state, hidden):
    return net.encoder.final_layer_norm(hidden)


def _t5_activations(config, shapes, query_rows=None):
    b, n = shapes["input_ids"]
    return 2 * b * config.num_heads * n * n * 4 * 2 + b * n * (3 * config.d_ff + 8 * config.d_model) * 4 * 2


def _t5_taps(config, shapes):
    b, n = shapes["input_ids"]
    return b * n * config.d_model * 4


STAGES = {
    "transformer": Stages("transformer_blocks", ("scale_shift_table", "norm_out", "proj_out"), _pixart_block,
                          _pixart_embed, _pixart_prepare, _pixart_args, _pixart_tapped, _pixart_fed, _pixart_final,
                          _pixart_activations, _pixart_taps),
    "text_encoder": Stages("encoder.block", ("encoder.final_layer_norm",), _t5_block, _t5_embed, _t5_prepare,
                           _t5_args, _t5_tapped, _t5_fed, _t5_final, _t5_activations, _t5_taps),
}


def stages_of(view: str) -> Stages | None:
    """The stage description of a view, or None when it is compared whole (the VAE)."""
    return STAGES.get(view)
