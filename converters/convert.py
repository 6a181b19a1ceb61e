"""``convert``: source path -> MindSpore folder (config.json, weights, manifest.json), atomically; ``--to diffusers``
/ ``--to original`` go the other way through the same plans (``converters.backward``).

Everything is checked before the first byte moves: the output location, the arguments, the layout, the config and
the full plan against the target network, then the free space. The folder is written under a temporary name beside
the target, fsynced and renamed into place only when complete (``pixart_core.outputs``), so a failed or interrupted
run leaves nothing at the target.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pixart_core import dtypes, registry
from pixart_core.components import PIPELINE_COPIED
from pixart_core.errors import PlanError, SourceError, ToolError, UsageError
from pixart_core.naming import fold
from pixart_core.outputs import atomic_folder, check_output

from .configs import check_sample_size, read_given_config, resolve_config
from .detect import Job, detect, is_pipeline, read_json, refuse_mindspore_output
from .engine import Plan, build_plan, stream_plan
from .keymaps import spec_for
from .manifest import component_manifest, write_manifest
from .writers import MINDSPORE_METADATA, WRITERS


@dataclass
class ComponentResult:
    component: str
    layout: str
    source: str
    folder: Path
    plan: Plan
    config: dict
    notes: list[str] = field(default_factory=list)
    weights_file: str | None = None
    dtype_policy: str = "keep"

    def summary(self) -> dict:
        plan = self.plan
        # fp16 asked, fp32 kept by the component's dtype policy (T5's wo overflows fp16)
        kept = [t.name for t in plan.targets if self.dtype_policy == "fp16" and t.dtype == "float32"
                and t.source_dtype in dtypes.FLOAT_NAMES and not t.extra]
        return {
            "component": self.component, "layout": self.layout, "source": self.source,
            "folder": str(self.folder), "weights_file": self.weights_file,
            "tensors": len([t for t in plan.targets if not t.extra]),
            "extras": [t.name for t in plan.targets if t.extra],
            "values": sum(dtypes.numel(t.shape) for t in plan.targets if not t.extra),
            "bytes": plan.total_bytes,
            "dtypes": sorted({t.dtype for t in plan.targets}),
            "kept_fp32": fold(kept),
            "dropped": [{"key": k, "reason": r} for k, r in plan.dropped],
            "notes": self.notes,
        }


@dataclass
class Options:
    config: Path | None = None
    sample_size: int | None = None
    dtype: str = "keep"
    fmt: str = "safetensors"
    ema: bool = False
    keep_y_embedding: bool = True
    to: str = "mindspore"  # the layout written: our MindSpore folders, or a torch layout (converters.backward)
    y_embedding_from: Path | None = None  # a checkpoint to take the transformer's caption-dropout embedding from


def plan_job(job: Job, opts: Options):
    """Config and checked plan for one component; raises PlanError listing every problem."""
    config, written, notes = resolve_config(job, opts.config, opts.sample_size)
    if opts.y_embedding_from is not None:
        notes.append(borrow_y_embedding(job, opts))
    notes.extend(job.source.notes)  # how the reader read it, when a user may want to know (torch.load fallback)
    component = registry.component(job.component)
    prefix = registry.layout(job.layout).ema_prefix
    if opts.ema and prefix and not any(k.startswith(prefix) for k in job.source.infos):
        raise SourceError(f"{job.path}: --ema given but no {prefix}* entries (an EMA file of plain names converts "
                          "without --ema)")
    spec = spec_for(job.layout, keep_y_embedding=opts.keep_y_embedding, ema=opts.ema)
    table = component.parameter_shapes(config)  # the network's own table, checked equal in the tests
    plan = build_plan(spec, job.source, table, component.extras, opts.dtype, component.keep_fp32)
    plan.raise_if_problems()
    return config, written, notes, plan


def borrow_y_embedding(job: Job, opts: Options) -> str:
    """``--y-embedding-from``: the caption-dropout embedding, frozen in training and therefore absent from mindone's
    checkpoints of trainable parameters, taken from another checkpoint of the same model (the one training started
    from); the original layout cannot do without it. Returns the note recorded in the manifest."""
    from .keymaps.pixart import Y_EMBEDDING
    from .sources import OverlaySource

    if job.component != "transformer":
        raise UsageError(f"--y-embedding-from applies to the transformer, not the {job.component}")
    if not opts.keep_y_embedding:
        raise UsageError("--y-embedding-from and --drop-y-embedding contradict each other")
    here = name_in_layout(job.layout, Y_EMBEDDING)
    if here in job.source.infos:
        raise UsageError(f"{job.path} has its own {here}; --y-embedding-from would replace it")
    donor = detect(opts.y_embedding_from, "transformer")
    there = name_in_layout(donor.layout, Y_EMBEDDING)
    if there not in donor.source.infos:
        donor.source.close()
        raise SourceError(f"{opts.y_embedding_from}: no caption-dropout embedding ({there or Y_EMBEDDING}) in it")
    job.source = OverlaySource(job.source, {here: (donor.source, there)})
    return f"{here} taken from {opts.y_embedding_from} ({there})"


def name_in_layout(layout: str, name: str) -> str | None:
    """The key a layout gives one of our MindSpore names (its key map run backwards)."""
    from .keymaps.rules import fill

    hit = spec_for(layout).inverse().first_rule(name)
    return fill(hit[0].targets[0], hit[2]) if hit and hit[0].targets else None


def write_component(job: Job, folder: Path, opts: Options, written: dict, notes: list[str], plan: Plan,
                    progress) -> ComponentResult:
    component = registry.component(job.component)
    folder.mkdir(parents=True)
    weights_name = f"{component.weights_stem}.{opts.fmt}"
    entries = [(t.name, t.dtype, t.shape) for t in plan.targets]
    writer = WRITERS[opts.fmt](folder / weights_name, entries, MINDSPORE_METADATA)
    digests = stream_into(writer, plan, job.source, progress)
    (folder / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    manifest = component_manifest(job, plan, digests, folder, weights_name, writer, written, notes, opts.dtype,
                                  layout=plan.spec, target="mindspore", dropped=plan.dropped)
    write_manifest(folder, manifest)
    return ComponentResult(job.component, job.layout, str(job.path), folder, plan, written, notes, weights_name,
                           opts.dtype)


def stream_into(writer, plan: Plan, source, progress, check=None) -> dict[str, str]:
    """``stream_plan`` into ``writer``, then ``check()``; the writer is closed when both succeed and aborted
    otherwise, the source closed either way. Returns the tensors' sha256 by name."""
    try:
        digests = stream_plan(plan, source, writer, progress)
        if check is not None:
            check()
    except BaseException:
        writer.abort()
        raise
    finally:
        source.close()
    writer.close()
    return digests


def byte_progress(total: int, desc: str, enabled: bool):
    # redrawn at most every 5 s when stderr is a log file rather than a terminal
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 5.0)


def planned_bytes(plan: Plan) -> int:
    """What writing ``plan`` puts on disk: the tensors, plus headers and manifest rows."""
    return plan.total_bytes + 1024 * len(plan.targets)


def check_arguments(src: Path, out: Path, opts: Options, overwrite: bool, dry_run: bool) -> None:
    """Every check that needs no source read: paths first, then the options."""
    if not src.exists():
        raise SourceError(f"{src}: no such file or folder")
    if not dry_run:
        check_output(out, inputs=[src], overwrite=overwrite)
    check_sample_size(opts.sample_size, opts.config is not None)
    if opts.config is not None:
        read_given_config(opts.config)  # readable now; its component is checked once the source's is known


def convert(src, out, component: str = "auto", opts: Options | None = None, overwrite: bool = False,
            dry_run: bool = False, progress: bool = True, log=None) -> dict:
    """Convert one component, or a whole diffusers pipeline folder (``--to diffusers|original``: back from MindSpore
    weights). Returns a JSON-able summary. ``log``: where one-line notes about the output location go (stderr by
    default)."""
    opts = opts or Options()
    src, out = Path(src), Path(out)
    started = time.time()
    check_arguments(src, out, opts, overwrite, dry_run)
    if opts.to != "mindspore":
        from .backward import convert_back

        return convert_back(src, out, component, opts, dry_run, progress, started, log)
    refuse_mindspore_output(src)
    if component == "pipeline" or (component == "auto" and is_pipeline(src)):
        return convert_pipeline(src, out, opts, dry_run, progress, started, log)
    job = detect(src, component, ema=opts.ema)
    try:
        config, written, notes, plan = plan_job(job, opts)
    except ToolError:
        job.source.close()
        raise
    if dry_run:
        job.source.close()
        return {"dry_run": True, "components": [_plan_summary(job, plan, written, notes, opts.dtype)]}
    bar = byte_progress(plan.total_bytes, job.component, progress)
    try:
        with atomic_folder(out, planned_bytes(plan), log) as tmp:
            result = write_component(job, tmp, opts, written, notes, plan, bar.update)
    finally:
        bar.close()
    summary = result.summary()
    summary["folder"] = str(out)
    return {"output": str(out), "seconds": round(time.time() - started, 2), "components": [summary]}


def convert_pipeline(src: Path, out: Path, opts: Options, dry_run: bool, progress: bool, started: float,
                     log=None) -> dict:
    """A diffusers PixArt-Sigma pipeline folder: the three networks converted, tokenizer and scheduler copied,
    ``model_index.json`` written; every component planned (and every problem reported) before any writing."""
    def write_one(name, folder, update):
        job, _, written, notes, plan = planned[name]
        return write_component(job, folder, opts, written, notes, plan, update).summary()

    index, planned = plan_pipeline(src, opts, lambda job: (job, *plan_job(job, opts)))
    if dry_run:
        return {"dry_run": True, "components": [_plan_summary(job, plan, written, notes, opts.dtype)
                                                for job, _, written, notes, plan in planned.values()]}
    total = sum(plan.total_bytes for *_, plan in planned.values())
    disk = sum(planned_bytes(plan) for *_, plan in planned.values())
    summaries = write_pipeline(src, out, index, list(planned), total, disk, write_one, progress, log)
    return {"output": str(out), "seconds": round(time.time() - started, 2), "components": summaries,
            "copied": list(PIPELINE_COPIED)}


def plan_pipeline(src: Path, opts: Options, plan_one) -> tuple[dict, dict]:
    """(``model_index.json``, {component: ``plan_one(job)``}) for every component of a pipeline folder, all planned
    before anything is written; one PlanError lists the problems of every component."""
    if not is_pipeline(src):
        raise SourceError(f"{src}: not a pipeline folder (no model_index.json)")
    if opts.config is not None:
        raise SourceError(f"{src}: --config applies to one component; a pipeline's components carry their own")
    index = read_json(src / "model_index.json")
    absent = [name for name in tuple(registry.COMPONENTS) + PIPELINE_COPIED if not (src / name).is_dir()]
    if absent:
        raise SourceError(f"{src}: pipeline folder lacks {', '.join(absent)}/")
    planned, problems = {}, []
    for name in tuple(registry.COMPONENTS):
        job = None
        try:
            job = detect(src / name, name, ema=opts.ema)
            planned[name] = plan_one(job)
        except PlanError as exc:
            problems.extend(f"{name}: {p}" for p in exc.problems)
        except ToolError as exc:
            problems.append(str(exc))
        finally:
            if job is not None:
                job.source.close()
    if problems:
        raise PlanError(str(src), problems)
    return index, planned


def write_pipeline(src: Path, out: Path, index: dict, names: list[str], total: int, disk: int, write_one,
                   progress: bool, log=None) -> list[dict]:
    """Write a pipeline folder atomically: ``write_one(name, folder, update) -> summary`` per component, the
    tokenizer and scheduler copied, ``model_index.json`` kept. ``total``: tensor bytes (progress); ``disk``: what
    the weights files will take (the free-space check). Returns the summaries."""
    copied = sum(f.stat().st_size for name in PIPELINE_COPIED for f in (src / name).rglob("*") if f.is_file())
    bar = byte_progress(total, "pipeline", progress)
    summaries = []
    try:
        with atomic_folder(out, disk + copied, log) as tmp:
            tmp.mkdir()
            for name in names:
                bar.set_description(name)
                summary = write_one(name, tmp / name, bar.update)
                summary["folder"] = str(out / name)
                summaries.append(summary)
            for name in PIPELINE_COPIED:
                shutil.copytree(src / name, tmp / name)
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    finally:
        bar.close()
    return summaries


def _plan_summary(job: Job, plan: Plan, written: dict, notes: list[str], policy: str = "keep") -> dict:
    result = ComponentResult(job.component, job.layout, str(job.path), Path("-"), plan, written, notes,
                             dtype_policy=policy)
    summary = result.summary()
    summary["plan"] = [{"target": t.name, "sources": list(t.group.sources), "op": t.group.op,
                        "shape": list(t.shape), "dtype": t.dtype} for t in plan.targets]
    return summary
