"""Block-streamed parity: at any time one block of each side is in memory, whatever the depth.

Each side's weights are read lazily, per stage, from its own file: the torch side from the source checkpoint
through the key map (as ``converters.references`` does for the whole network), the MindSpore side from the
converted folder. The torch reference runs its own forward with every block but the current one on the ``meta``
device: a block's forward pre-hook loads it, its forward hook compares it and sends it back to ``meta``. In that
hook the MindSpore block is built, run on the MindSpore side's own hidden state with every tap compared (so the
taps are exactly those of whole-network mode: the error accumulated over depth), run once more fed the torch
block's inputs (``local``: the error the block adds by itself), and freed. The embedding and final stages run the
same way around the blocks (``parity.stages``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mindspore_nets.metrics import compare
from pixart_core import dtypes, registry
from pixart_core.errors import DataError, WeightsError
from pixart_core.heap import map_large_buffers, release_freed_memory
from pixart_core.manifests import read_manifest

from .stages import Stages, stages_of
from .taps import _first_array, tap_paths, tied_modules


class StageWeights:
    """The tensors of a checkpoint under the target (network) names, read one stage at a time: a checked plan
    of the file's layout, whose groups are produced only for the names a stage asks for."""

    def __init__(self, path, component: str, dtype: str):
        from converters.detect import detect
        from converters.engine import build_plan
        from converters.keymaps import spec_for

        job = detect(Path(path), component)
        self.source, self.description = job.source, job.source.description
        self.plan = build_plan(spec_for(job.layout, keep_y_embedding=False), job.source, None, dtype=dtype)
        self.plan.raise_if_problems()
        self.by_name = {t.name: t for t in self.plan.targets}

    def nbytes(self, select) -> int:
        return sum(t.nbytes for t in self.plan.targets if select(t.name) and not t.extra)

    def items(self, select):
        """(name, array) of every selected target, one rule group read at a time."""
        from converters.engine import produce_group

        bad = []
        for group in self.plan.groups:
            if any(select(name) for name in group.targets):
                for name, value in produce_group(group, self.source, self.by_name, bad).items():
                    if select(name) and not self.by_name[name].extra:
                        yield name, value
        if bad:
            raise DataError(f"{self.description}: " + "; ".join(bad))

    def read(self, select) -> dict[str, np.ndarray]:
        return dict(self.items(select))

    def close(self):
        self.source.close()


def _under(prefix: str):
    return lambda name: name.startswith(prefix + ".")


def _within(prefixes):
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def stage_selectors(stages: Stages):
    """(embedding, final) parameter-name predicates: the final stage's own paths, and every other path outside
    the blocks (the embedding's weights are dropped once it has run: T5-XXL's table is 0.5 GiB a side)."""
    in_blocks, in_final = _under(stages.blocks), _within(stages.final_params)
    return (lambda n: not in_blocks(n) and not in_final(n)), (lambda n: not in_blocks(n) and in_final(n))


def torch_release(model, select) -> None:
    """Drop the selected parameters' data (tied parameters are one object, dropped once)."""
    import torch

    for name, param in model.named_parameters():
        if select(name):
            param.data = torch.empty(0)


def torch_reload(model, weights: "StageWeights", select) -> None:
    import torch

    params = dict(model.named_parameters())
    for name, value in weights.items(select):
        params[name].data = torch.from_numpy(np.ascontiguousarray(value, np.float32))


def _resolve(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def torch_glue(component: str, config: dict, stages: Stages, weights: StageWeights):
    """The torch reference with its embedding and final layers loaded and its blocks on the ``meta`` device."""
    import torch

    from converters.references import torch_model
    from converters.sources import numpy_to_torch

    glue = torch_model(component, {**config, "num_layers": 0})
    with torch.device("meta"):
        full = torch_model(component, config)
    parent, _, attr = stages.blocks.rpartition(".")
    setattr(_resolve(glue, parent) if parent else glue, attr, getattr(_resolve(full, parent) if parent else full, attr))
    del full
    in_blocks = _under(stages.blocks)
    state = {k: numpy_to_torch(v) for k, v in weights.read(lambda n: not in_blocks(n)).items()}
    missing, unexpected = glue.load_state_dict(state, strict=False)
    missing = [k for k in missing if not in_blocks(k) and k not in registry.component(component).tied_in_torch]
    if missing or unexpected:
        raise WeightsError(f"{weights.description}: torch reference does not load: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if registry.component(component).tied_in_torch:
        glue.tie_weights()
    return glue.float().eval(), _resolve(glue, stages.blocks)


def load_torch_block(module, prefix: str, weights: StageWeights) -> None:
    import torch

    from converters.sources import numpy_to_torch

    persistent = set(module.state_dict())
    volatile = [n for n, _ in module.named_buffers() if n not in persistent]
    if volatile:  # a buffer no checkpoint holds would come out of to_empty as garbage
        raise NotImplementedError(f"{prefix}: non-persistent buffers {volatile} cannot be streamed")
    expected = dict(module.state_dict())
    module.to_empty(device="cpu")
    targets = dict(module.state_dict(keep_vars=True))
    # copied tensor by tensor in the source's dtype, which copy_ casts exactly: the block and one source tensor in
    # memory, not two blocks, nor an extra fp32 copy of the tensor (T5-XXL's wi is 168 MB in fp32)
    with torch.no_grad():
        for name, value in weights.items(_under(prefix)):
            key = name[len(prefix) + 1:]
            if key not in targets or tuple(targets[key].shape) != value.shape:
                raise WeightsError(f"{weights.description}: {name} {value.shape} does not fit the torch block "
                                   f"({tuple(expected[key].shape) if key in expected else 'no such tensor'})")
            targets.pop(key).copy_(numpy_to_torch(value))
            del value
    if targets:
        raise WeightsError(f"{weights.description}: {prefix} is missing {', '.join(sorted(targets))}")
    module.eval()


def compute_dtype(dtype: str):
    """(MindSpore dtype the network computes in, round weights to bf16): bf16 on CPU is storage only."""
    import mindspore as ms

    from mindspore_nets.layers import to_ms_dtype

    if dtype == "bf16" and ms.get_context("device_target") == "CPU":
        return ms.float32, True
    return to_ms_dtype(dtype), False


def load_ms(cell, tensors: dict, round_bf16: bool, where: str):
    """Fill a fresh cell. The parameters are cast by numpy and handed over without a copy (``from_numpy``): memory
    that MindSpore allocates stays in its pool when the cell goes, and each new block structure (T5's block 0, then
    the others) would add a block's weights to the process for good (+0.57 GiB at T5-XXL size)."""
    import mindspore as ms

    from mindspore_nets.loading import check_names_and_shapes

    check_names_and_shapes(cell, tensors, (), where)
    for name, param in cell.parameters_and_names():
        target = dtypes.numpy_dtype(dtypes.name_of_ms(param.dtype))
        # a fresh array: the parameter is later refilled in place (copy_), never into the source's buffer
        param.set_data(ms.from_numpy(np.array(tensors[name], dtype=target, order="C", copy=True)))
    if round_bf16:
        for _, param in cell.parameters_and_names():
            param.set_data(param.astype(ms.bfloat16).astype(ms.float32))
    cell.set_train(False)
    return cell


def ms_glue(component: str, config, weights: StageWeights, dtype: str, select):
    """The MindSpore network with the ``select``-ed parameters loaded; the others stay uninitialised
    (``no_init_parameters`` allocates nothing until data is set)."""
    from mindspore.nn.utils import no_init_parameters

    from mindspore_nets.loading import check_names_and_shapes

    cls = registry.component(component).network_class()
    ms_type, round_bf16 = compute_dtype(dtype)
    with no_init_parameters():
        net = cls(config, dtype=ms_type)
    tensors = weights.read(select)
    params = {n: p for n, p in net.parameters_and_names() if select(n)}

    class _View:  # the glue parameters alone, for the strict name/shape check
        def parameters_and_names(self):
            return params.items()

    check_names_and_shapes(_View(), tensors, where=weights.description)
    import mindspore as ms

    for name, param in params.items():
        value = ms.Tensor(tensors.pop(name)).astype(param.dtype)
        param.set_data(value.astype(ms.bfloat16).astype(ms.float32) if round_bf16 else value)
    net.set_train(False)
    return net


class BlockRunner:
    """The MindSpore block of the current stage. One cell per block structure is kept and refilled for each block
    (T5's block 0, which owns the position table, and the others; KV-compressed PixArt blocks), and only the
    current structure's: with ``jit`` its compiled graphs then serve every block of that structure, compiled once.
    Without ``jit`` the taps come from forward hooks in PYNATIVE mode, as in whole-network mode."""

    def __init__(self, stages: Stages, config, ms_type, round_bf16: bool, jit: bool):
        self.stages, self.config, self.ms_type, self.round_bf16, self.jit = stages, config, ms_type, round_bf16, jit
        self.key = self.cell = None

    def load(self, index: int, tensors, where: str):
        """Block ``index``'s weights from ``tensors``, (relative name, array) pairs read lazily."""
        from mindspore.nn.utils import no_init_parameters

        with no_init_parameters():
            fresh = self.stages.block_cell(self.config, index, self.ms_type)
        key = (type(fresh), tuple((n, tuple(p.shape)) for n, p in fresh.parameters_and_names()))
        import mindspore as ms

        if key == self.key:  # refilled in place: compiled graphs keep the memory set_data would replace
            params = dict(self.cell.parameters_and_names())
            for name, value in tensors:
                param = params.pop(name, None)
                if param is None or tuple(param.shape) != value.shape:
                    raise WeightsError(f"{where}: {name} {value.shape} does not fit the block")
                value = ms.Tensor(value).astype(param.dtype)
                if self.round_bf16:
                    value = value.astype(ms.bfloat16).astype(ms.float32)
                param.copy_(value)
                del value
            if params:
                raise WeightsError(f"{where}: missing {', '.join(sorted(params))}")
            return
        tensors = dict(tensors)
        self.close()
        tapped, names = self.stages.tapped(fresh)
        self.cell, self.tapped, self.names = fresh, tapped, names
        # one compiled graph serves both runs (the fed run drops the taps): each compiled graph keeps its own
        # activation memory between calls
        self.tapped_fn = ms.jit(tapped.construct) if self.jit else None
        load_ms(self.cell, tensors, self.round_bf16, where)
        self.key = key

    def close(self):
        """Drop the current cell and its compiled graphs (they hold its weights until recycled)."""
        import mindspore as ms

        self.key = self.cell = self.tapped = self.tapped_fn = None
        if self.jit:
            ms.ms_memory_recycle()
        release_freed_memory()

    def run_tapped(self, index, state, hidden, tap_names, consume):
        """The block on ``hidden`` with every tap in ``tap_names`` (relative paths) handed to ``consume``."""
        from .taps import mindspore_taps

        self.stages.prepare(self.cell, index, state)
        args = self.stages.block_args(state, hidden)
        if not self.jit:
            with mindspore_taps(self.cell, list(tap_names), consume=consume):
                return self.cell(*args)
        outputs = self.tapped_fn(*args)
        if not isinstance(outputs, (tuple, list)):  # a block tapped at its output only
            outputs = (outputs,)
        for name, value in zip(self.names, outputs):
            if name in tap_names:
                consume(name, _first_array(value))
        missing = set(tap_names) - set(self.names)
        if missing:
            raise KeyError(f"no tapped output for {sorted(missing)} in {type(self.tapped).__name__}")
        return outputs[0]

    def run(self, index, state, hidden):
        self.stages.prepare(self.cell, index, state)
        args = self.stages.block_args(state, hidden)
        if not self.jit:
            return self.cell(*args)
        outputs = self.tapped_fn(*args)
        return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def run_streamed(component: str, folder: Path, source: Path, dtype: str, tolerance: float, cases, query_rows=None,
                 jit: bool | None = None) -> dict:
    """Streamed parity of one view over ``cases``: the result dict of ``harness.run_component`` (the same taps and
    numbers) plus ``local``, each block's output when fed the torch block's input."""
    import contextlib

    from converters.keymaps import spec_for
    from mindspore_nets.layers import query_blocks

    from converters.references import torch_forward
    from .harness import summarize
    from .taps import mindspore_taps, torch_taps

    started = time.time()
    map_large_buffers()  # blocks' tensors go back to the OS when freed, not into glibc's heap
    view = registry.view(component)
    stages = stages_of(component)
    manifest = read_manifest(folder, "converted")
    config = registry.component(view.component).config_type().from_dict(manifest["config"])
    t_weights = StageWeights(source, view.component, "keep")  # cast by torch into the fp32 blocks: no fp32 copy
    m_weights = StageWeights(folder, view.component, "keep")
    model, torch_blocks = torch_glue(view.component, manifest["config"], stages, t_weights)
    embedding, final = stage_selectors(stages)
    net = ms_glue(view.component, config, m_weights, dtype, final)
    ms_type, round_bf16 = compute_dtype(dtype)
    paths = tap_paths(component, [p for p, _ in net.cells_and_names()])
    tied = tied_modules(spec_for(manifest["layout"]))
    prefix = stages.blocks + "."
    glue_paths = [p for p in paths if not p.startswith(prefix)]
    loaded = time.time()
    seconds = {"torch": 0.0, "mindspore": 0.0, "mindspore_fed": 0.0, "load": loaded - started}
    if jit is None:
        jit = compiled_blocks_fit(stages, config, cases)
    runner = BlockRunner(stages, config, ms_type, round_bf16, jit)
    taps, local = [], []
    rows = contextlib.nullcontext if query_rows is None else (lambda: query_blocks(query_rows))

    for number, case in enumerate(cases):
        if number:
            torch_reload(model, t_weights, embedding)
        pending: dict[str, np.ndarray] = {}
        order: list[str] = []
        found: dict[str, dict] = {}
        run = {}  # the MindSpore side's state: embedding outputs, chained hidden state, torch's last block output

        def keep_torch(key, value):
            order.append(key)
            pending[key] = value

        def measure(key, ours):
            ref = pending.pop(key, None)
            found[key] = (compare(ours, ref) if ref is not None else
                          {"error": "only on the MindSpore side", "shape": list(ours.shape), "rel_l2": float("inf"),
                           "nan": 0, "inf": 0})

        def prefixed(block_prefix):
            return lambda key, ours: measure(block_prefix + key if key else block_prefix.rstrip("."), ours)

        def timed(side, fn, *args):
            t0 = time.time()
            out = fn(*args)
            seconds[side] += time.time() - t0
            return out

        def before_block(module, args, kwargs):
            index = run["index"] = run.get("index", -1) + 1
            t0 = time.time()
            if index == 0:  # the embedding stage, fed the case's own inputs like the torch side
                t_load = time.time()
                embed_net = ms_glue(view.component, config, m_weights, dtype, embedding)
                seconds["load"] += time.time() - t_load
                with mindspore_taps(embed_net, glue_paths, consume=measure), rows():
                    run["state"], run["chain"] = timed("mindspore", stages.embed, embed_net, case.arrays)
                del embed_net
                torch_release(model, embedding)  # both sides' embedding weights: not needed until the next case
                release_freed_memory()
            t_load = time.time()
            load_torch_block(module, f"{stages.blocks}.{index}", t_weights)
            seconds["load"] += time.time() - t_load
            run["inside"] = run.get("inside", 0.0) + time.time() - t0

        def after_block(module, args, kwargs, output):
            entered = time.time()
            index = run["index"]
            name = f"{stages.blocks}.{index}"
            t0 = time.time()
            module.to("meta")  # the torch block is done: one block of each side in memory at a time
            release_freed_memory()
            tensors = ((k[len(name) + 1:], v) for k, v in m_weights.items(_under(name)))
            runner.load(index, tensors, f"{m_weights.description} ({name})")
            seconds["load"] += time.time() - t0
            rel = {p[len(prefix):].partition(".")[2] for p in paths if p == name or p.startswith(name + ".")}
            with rows():
                run["chain"] = timed("mindspore", runner.run_tapped, index, run["state"], run["chain"], rel,
                                     prefixed(name + "."))
            fed_state, fed_hidden = stages.fed(run["state"], args, kwargs)
            with rows():
                fed = timed("mindspore_fed", runner.run, index, fed_state, fed_hidden)
            torch_out = _first_array(output)
            local.append({"tap": name, "case": case.name, **compare(_first_array(fed), torch_out)})
            run["t_last"] = torch_out
            del fed, fed_hidden, fed_state
            release_freed_memory()
            run["inside"] += time.time() - entered
            bar.update()

        handles = []
        bar = tqdm(total=len(torch_blocks), desc=f"parity {component} {case.name}", unit="block", file=sys.stderr,
                   mininterval=1.0)
        with torch_taps(model, paths, tied, consume=keep_torch) as t_rec:
            for module in torch_blocks:
                handles.append(module.register_forward_pre_hook(before_block, with_kwargs=True))
                handles.append(module.register_forward_hook(after_block, with_kwargs=True))
            try:
                t0 = time.time()
                t_out = torch_forward(component, model, case.arrays)
                # the hooks' loading and MindSpore time is inside the torch forward's wall time: taken out
                seconds["torch"] += time.time() - t0 - run.get("inside", 0.0)
            finally:
                for h in handles:
                    h.remove()
                bar.close()
            t_rec.add("output", t_out)
        with mindspore_taps(net, glue_paths, consume=measure), rows():
            chain_out = timed("mindspore", stages.final, net, run["state"], run["chain"])
        measure("output", _first_array(chain_out))
        with rows():
            fed_out = timed("mindspore_fed", stages.final, net, run["state"], _tensor_of(run["t_last"]))
        local.append({"tap": "output", "case": case.name, **compare(_first_array(fed_out), t_out)})
        for key in list(pending):
            ref = pending.pop(key)
            found[key] = {"error": "only on the torch side", "shape": list(ref.shape), "rel_l2": float("inf"),
                          "nan": 0, "inf": 0}
        for key in order + [k for k in found if k not in order]:
            taps.append({"tap": key, "case": case.name, **found[key]})
    runner.close()
    t_weights.close()
    m_weights.close()
    summary = summarize(taps, tolerance)
    first = next((row["tap"] for row in summary if not row["ok"]), None)
    seconds["total"] = time.time() - started
    return {"folder": str(folder), "source": str(source), "dtype": dtype, "tolerance": tolerance, "mode": "streamed",
            "cases": [c.name for c in cases], "taps": taps, "summary": summary, "first_failure": first,
            "ok": first is None, "local": summarize_local(local),
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


JIT_ACTIVATION_LIMIT = 2**30  # one block forward's activations, all query rows at once (stages.activation_bytes)


def compiled_blocks_fit(stages: Stages, config, cases) -> bool:
    """Whether blocks run compiled (ms.jit, about torch's speed) or in PYNATIVE mode (2-4x slower). A compiled
    graph holds every query slice's scores at once (XL/2 at 1024²: a 4096-token block went past 9 GiB), so
    above ``JIT_ACTIVATION_LIMIT`` of activations the blocks run eagerly, slice by slice."""
    shapes = {name: value.shape for name, value in cases[0].arrays.items()}
    return stages.activation_bytes(config, shapes, None) <= JIT_ACTIVATION_LIMIT


def _tensor_of(array):
    import mindspore as ms

    return ms.Tensor(array)


def summarize_local(records: list[dict]) -> list[dict]:
    """One row per block (and the final stage): the worst case's relative L2 of the MindSpore block fed the torch
    block's own input, i.e. the error each block adds by itself."""
    rows: dict[str, dict] = {}
    for rec in records:
        row = rows.get(rec["tap"])
        if row is None or rec["rel_l2"] > row["rel_l2"]:
            rows[rec["tap"]] = {"tap": rec["tap"], "worst_case": rec["case"], "rel_l2": rec["rel_l2"],
                                "max_abs": rec.get("max_abs"), "cosine": rec.get("cosine")}
    return list(rows.values())
