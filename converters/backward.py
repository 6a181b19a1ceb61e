"""``convert --to diffusers|original``: MindSpore weights (our folders, MindSpore checkpoints, mindone's training
output) written in a torch layout, through the same plans as forward conversion run backwards.

Two checked plans, chained by ``engine.PlanSource``:

1. the source's layout -> our MindSpore names, checked against the MindSpore network of the config: exactly the
   plan of a forward conversion, so every unknown entry, missing parameter and shape that does not fit the config
   stops here;
2. our names -> the written layout: that layout's own spec inverted (``Spec.inverse``; every rule kind owns its
   inverse), behind named drops of the extras the layout has no place for; then the layout's ``complete`` hook
   (the original's ``pos_embed`` buffer); for diffusers / transformers folders the targets are checked against the
   torch class's own state dict (built on the meta device), so the folder loads with no missing or unexpected key.

Then one stream through the same staged writers as a forward conversion (safetensors with ``format: pt``, or a
``.pth``): a target that both rules keep as byte ranges of the source file (``PlanSource.spans``) is read straight
into the output buffers and checked there, any other is produced a group at a time through both rules; the folder is written beside the target and renamed when complete, with the
same manifest as a forward conversion (``target`` says which way it went).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pixart_core import registry
from pixart_core.components import PIPELINE_COPIED
from pixart_core.errors import DataError, UsageError
from pixart_core.naming import fold

from pixart_core.outputs import atomic_folder

from .convert import (ComponentResult, Options, _plan_summary, byte_progress, plan_job, plan_pipeline,
                      planned_bytes, stream_into, write_pipeline)
from .detect import Job, detect, is_pipeline
from .engine import Plan, PlanSource, build_plan, check_aliases
from .keymaps.rules import Drop, Spec
from .manifest import component_manifest, write_manifest
from .writers import TORCH_METADATA, writer_for


@dataclass
class BackPlan:
    job: Job
    to: str
    layout: registry.Layout
    config: dict  # the converted config, written as config.json
    notes: list[str]
    forward: Plan  # source -> our MindSpore names
    source: PlanSource  # the forward plan's targets, read lazily
    plan: Plan  # our names -> the written layout


def written_spec(component: str, layout: registry.Layout, opts: Options) -> Spec:
    """The key map of ``layout`` inverted, behind named drops of our extras it has no place for."""
    forward = layout.make_spec(keep_y_embedding=opts.keep_y_embedding, ema=False)
    kept = {t for rule in forward.rules if rule.extra for t in rule.targets}
    drops = tuple(Drop(name, f"kept extra of the MindSpore weights; the {layout.name} layout has no place for it")
                  for name in registry.component(component).extras if name not in kept)
    return Spec(layout.name, component, drops + forward.inverse().rules)


def check_against_torch(plan: Plan, component: registry.Component, config: dict) -> dict:
    """The targets must be the torch class's state dict, name for name and shape for shape. Returns the config
    to write: a diffusers class's keys only (ours, such as ``kv_compress_layers``, would be warned about)."""
    import torch

    from pixart_core.components._shared import init_kwargs

    with torch.device("meta"):
        model = component.torch_model(config)  # SourceError for variants the class cannot express
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {t.name: t.shape for t in plan.targets}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        plan.problems.append(f"{component.class_name} would miss {len(missing)} tensor(s): {', '.join(fold(missing))}")
    if unexpected:
        plan.problems.append(f"{component.class_name} has no {len(unexpected)} tensor(s): "
                             f"{', '.join(fold(unexpected))}")
    plan.problems.extend(f"{name}: {got[name]}, {component.class_name} expects {expected[name]}"
                         for name in sorted(set(got) & set(expected)) if got[name] != expected[name])
    if component.writes_class_name:
        return {"_class_name": component.class_name, **init_kwargs(type(model), config)}
    return config


def plan_back(job: Job, to: str, opts: Options) -> BackPlan:
    """Both plans of one component, checked; raises PlanError listing every problem."""
    layout = registry.written_layout(job.component, to)
    if job.layout == layout.name and job.source.kind != "mindspore":
        raise UsageError(f"{job.path}: already in the {to} layout ({layout.name}); nothing to convert")
    _, written, notes, forward = plan_job(job, replace(opts, dtype="keep"))
    component = registry.component(job.component)
    source = PlanSource(forward, job.source)
    plan = build_plan(written_spec(job.component, layout, opts), source, None, dtype=opts.dtype,
                      keep_fp32=component.keep_fp32)
    if layout.complete:
        registry.load(layout.complete)(plan, written)
    if layout.folder_weights and not plan.problems:  # a diffusers / transformers folder: its class loads it
        written = check_against_torch(plan, component, written)
    plan.raise_if_problems()
    return BackPlan(job, to, layout, written, notes, forward, source, plan)


def write_back(bp: BackPlan, folder: Path, opts: Options, progress) -> ComponentResult:
    job, plan = bp.job, bp.plan
    folder.mkdir(parents=True)
    weights_name = bp.layout.output_file
    writer = writer_for(weights_name)(folder / weights_name, [(t.name, t.dtype, t.shape) for t in plan.targets],
                                      TORCH_METADATA)

    def check():  # what the forward half found: NaN/Inf in the source, tied copies that differ
        bad = bp.source.bad + check_aliases(bp.forward, job.source)
        if bad:
            raise DataError(f"{plan.source}: {len(bad)} tensor(s) cannot be converted: " + "; ".join(bad))

    digests = stream_into(writer, plan, bp.source, progress, check)
    (folder / "config.json").write_text(json.dumps(bp.config, indent=2) + "\n")
    manifest = component_manifest(job, plan, digests, folder, weights_name, writer, bp.config, bp.notes, opts.dtype,
                                  layout=bp.layout.name, target=bp.to, dropped=bp.forward.dropped + plan.dropped,
                                  source_layout=job.layout)
    write_manifest(folder, manifest)
    return _result(bp, folder)


def _result(bp: BackPlan, folder: Path) -> ComponentResult:
    plan = replace(bp.plan, dropped=bp.forward.dropped + bp.plan.dropped)
    return ComponentResult(bp.job.component, bp.job.layout, str(bp.job.path), folder, plan, bp.config, bp.notes,
                           bp.layout.output_file)


def _summary(bp: BackPlan, folder, dry_run: bool = False) -> dict:
    result = _result(bp, Path(folder))
    summary = (_plan_summary(bp.job, result.plan, bp.config, bp.notes) if dry_run else result.summary())
    summary.update(folder=str(folder), to=bp.to, written_layout=bp.layout.name)
    return summary


def convert_back(src: Path, out: Path, component: str, opts: Options, dry_run: bool, progress: bool, started: float,
                 log=None) -> dict:
    """``convert --to diffusers|original`` after ``convert.check_arguments``."""
    if opts.fmt != "safetensors":
        raise UsageError(f"--format {opts.fmt} applies to --to mindspore; --to {opts.to} writes "
                         f"{'safetensors' if opts.to == 'diffusers' else '.pth'}")
    if component == "pipeline" or (component == "auto" and is_pipeline(src)):
        return _convert_back_pipeline(src, out, opts, dry_run, progress, started, log)
    job = detect(src, component, ema=opts.ema)
    try:
        bp = plan_back(job, opts.to, opts)
    finally:
        job.source.close()
    if dry_run:
        return {"dry_run": True, "components": [_summary(bp, "-", dry_run=True)]}
    bar = byte_progress(bp.plan.total_bytes, job.component, progress)
    try:
        with atomic_folder(out, planned_bytes(bp.plan), log) as tmp:
            write_back(bp, tmp, opts, bar.update)
    finally:
        bar.close()
    return {"output": str(out), "seconds": round(time.time() - started, 2), "components": [_summary(bp, out)]}


def _convert_back_pipeline(src: Path, out: Path, opts: Options, dry_run: bool, progress: bool,
                           started: float, log=None) -> dict:
    """A pipeline folder (ours, for MindSpore): every component planned before any writing, then written, with
    the tokenizer and scheduler copied and ``model_index.json`` kept."""
    if opts.to != "diffusers":
        raise UsageError(f"--to {opts.to} writes the transformer alone; pass {src / 'transformer'}")
    index, planned = plan_pipeline(src, opts, lambda job: plan_back(job, opts.to, opts))
    if dry_run:
        return {"dry_run": True, "components": [_summary(bp, "-", dry_run=True) for bp in planned.values()]}

    def write_one(name, folder, update):
        write_back(planned[name], folder, opts, update)
        return _summary(planned[name], out / name)

    total = sum(bp.plan.total_bytes for bp in planned.values())
    disk = sum(planned_bytes(bp.plan) for bp in planned.values())
    summaries = write_pipeline(src, out, index, list(planned), total, disk, write_one, progress, log)
    return {"output": str(out), "seconds": round(time.time() - started, 2), "components": summaries,
            "copied": list(PIPELINE_COPIED)}
