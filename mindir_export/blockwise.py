"""The eager network run a block at a time from the weights file, for components whose whole eager network does not
fit the memory budget (T5-XXL in fp16: the whole network in PYNATIVE mode passed 22 GiB for 10.75 GiB of weights;
the XL/2 in fp16 at 1024^2 passed 3 GiB for 1.14 GiB). T5 and the PixArt transformer have runners (each follows
its network's ``construct``; tests check they give the whole network's numbers exactly).

Only one block's weights are resident: the embedding, block 0 (it owns the relative position bias) and one more
block Cell reused for blocks 1..N-1, each parameter ``set_data`` from the converted file in turn (a new PYNATIVE
Cell per block leaks about 0.5 GiB each; reusing one stays flat). The output equals the whole network's in
PYNATIVE mode (research/export/q3_blockwise.py: identical; 2.67 GiB peak for T5-XXL fp16).

The stored weights are checked here against MindSpore's own cast of the source tensors, parameter by parameter
(the artifact's bytes == ``Tensor(source).astype(dtype)``), since no whole network exists to compare with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pixart_core import dtypes
from pixart_core.heap import map_large_buffers

from . import lean
from .streaming import WeightReader, parameter_name

RUNNERS = {"text_encoder", "transformer"}  # views with a block-by-block runner


def supported(view: str) -> bool:
    return view in RUNNERS


def t5_forward(folder: Path, dtype: str, arrays: list[np.ndarray]) -> np.ndarray:
    """``T5Encoder(ids, mask)`` in PYNATIVE mode with one block's weights resident at a time."""
    import mindspore as ms
    from mindspore.nn.utils import no_init_parameters

    from mindspore_nets.layers import key_mask_bias, to_ms_dtype
    from mindspore_nets.t5 import T5Block, T5Embedding, T5LayerNorm

    config = lean.config_object("text_encoder", folder)
    compute = to_ms_dtype(dtype)
    reader = WeightReader(lean.weights_file("text_encoder", folder))

    def filled(cell, prefix: str):
        for name, param in cell.parameters_and_names():
            param.set_data(ms.from_numpy(reader.read(prefix + name, dtypes.name_of_ms(param.dtype))))
        cell.set_train(False)
        return cell

    ids, mask = (ms.Tensor(a) for a in arrays)
    try:
        with ms._no_grad(), no_init_parameters():
            embedding = T5Embedding(config.vocab_size, config.d_model, dtype=compute)
            first = T5Block(config, has_relative_attention_bias=True, dtype=compute)
            other = T5Block(config, has_relative_attention_bias=False, dtype=compute) if config.num_layers > 1 \
                else None
            norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, dtype=compute)
        with ms._no_grad():
            hidden = filled(embedding, "shared.")(ids)
            del embedding
            filled(first, "encoder.block.0.")
            bias = first.layer[0].SelfAttention.compute_bias(ids.shape[1]) + key_mask_bias(mask)
            hidden = first(hidden, bias)
            del first
            for i in range(1, config.num_layers):
                hidden = filled(other, f"encoder.block.{i}.")(hidden, bias)
            return filled(norm, "encoder.final_layer_norm.")(hidden).asnumpy()
    finally:
        reader.close()


def pixart_forward(folder: Path, dtype: str, arrays: list[np.ndarray]) -> np.ndarray:
    """``PixArtTransformer2D`` in PYNATIVE mode (its ``construct``, step by step) with every weight outside the
    blocks resident and the blocks run one at a time through one block Cell refilled for each, sample by sample."""
    import mindspore as ms

    net, _ = lean.skeleton("transformer", folder, dtype)
    reader = WeightReader(lean.weights_file("transformer", folder))

    def fill(cell, prefix: str) -> None:
        for name, param in cell.parameters_and_names():
            param.set_data(ms.from_numpy(reader.read(prefix + name, dtypes.name_of_ms(param.dtype))))

    try:
        for name, param in net.parameters_and_names():
            if not name.startswith("transformer_blocks."):
                param.set_data(ms.from_numpy(reader.read(name, dtypes.name_of_ms(param.dtype))))
        hidden_states, timestep, encoder_hidden_states, mask = (ms.Tensor(a) for a in arrays)
        with ms._no_grad():
            h, w = hidden_states.shape[2] // net.patch_size, hidden_states.shape[3] // net.patch_size
            x, modulation, embedded_timestep, context, bias = net.embed(hidden_states, timestep,
                                                                        encoder_hidden_states, mask)
            block = net.transformer_blocks[0]
            # one sample at a time through each block: MindSpore's CPU pool keeps what a block's forward touched,
            # about 2 GiB for a batch of two at 1024^2 against 0.8 GiB for one (research/s18/block_mem.py); the
            # samples are independent and the outputs are bitwise those of the whole batch
            samples = [[t if t is None else t[j:j + 1] for t in (x, modulation, context, bias)]
                       for j in range(x.shape[0])]
            for i in range(len(net.transformer_blocks)):
                fill(block, f"transformer_blocks.{i}.")
                for sample in samples:
                    sample[0] = block(*sample, h, w)
            x = ms.ops.concat([sample[0] for sample in samples], axis=0)
            return net.finish(x, embedded_timestep, h, w).asnumpy()
    finally:
        reader.close()


def forward(view: str, folder: Path, dtype: str, arrays: list[np.ndarray]) -> np.ndarray:
    map_large_buffers()  # each block's weights go back to the OS when the next block loads
    if view == "text_encoder":
        return t5_forward(folder, dtype, arrays)
    if view == "transformer":
        return pixart_forward(folder, dtype, arrays)
    raise ValueError(f"no block-by-block runner for {view}")


def stored_weight_problems(path: Path, folder: Path, view: str, names: dict[str, str]) -> tuple[int, list[str]]:
    """(parameters checked, problems): each stored parameter against MindSpore's cast of the source tensor."""
    import mindspore as ms

    from .reload import scan_graph
    from .validate import same_bytes

    path = Path(path)
    model, table = scan_graph(path)
    declared = {parameter_name(p): dtypes.from_mindir(p.data_type) for p in model.graph.parameter}
    del model
    reader = WeightReader(lean.weights_file(view, folder))
    problems, handles = [], {}
    try:
        for name, stored in table.items():
            source = reader.source.read(names.get(name, name))
            if source.dtype.name == "bfloat16":  # through its exact fp32 value (MindSpore takes no ml_dtypes)
                source = source.astype(np.float32)
            want = ms.Tensor(source).astype(dtypes.ms_dtype(declared[name])).asnumpy()
            if stored.where not in handles:
                handles[stored.where] = open(stored.where, "rb")
            if not same_bytes(handles[stored.where], stored.offset, stored.length, want.reshape(-1).view(np.uint8)):
                problems.append(f"{path.name}: {name} differs from the source's weights cast by MindSpore")
            del source, want
    finally:
        reader.close()
        for handle in handles.values():
            handle.close()
    return len(table), problems
