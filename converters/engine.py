"""Plan, check, stream: the one conversion mechanism behind every component and layout.

1. ``build_plan`` reads only names/shapes/dtypes, applies the spec's rules and checks the result against the
   target network's parameter table; every problem is collected before anything is read or written.
2. ``stream_plan`` reads, transforms, checks and writes one rule group (one tensor, or one fused group) at a time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import DataError, PlanError
from .keymaps.rules import Alias, Concat, Drop, Rename, Spec, Split, fill, match
from .sources import FLOAT_DTYPES, TORCH_DTYPES, Source
from .writers import TensorDictWriter, nbytes

FP16_MAX = 65504.0
DTYPE_POLICIES = {"keep": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Group:
    """One application of one rule: the source keys it consumes and the targets it fills."""

    rule: object
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def op(self) -> str:
        if isinstance(self.rule, Split):
            return f"split({len(self.targets)}, axis={self.rule.axis})"
        if isinstance(self.rule, Concat):
            return f"concat(axis={self.rule.axis})"
        return "rename" if self.sources != self.targets else "copy"


@dataclass
class Target:
    name: str
    shape: tuple[int, ...]
    source_dtype: str
    dtype: str
    group: Group
    extra: bool = False

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


@dataclass
class Plan:
    spec: str
    component: str
    source: str
    groups: list[Group] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (dropped tied copy, the key converted)
    problems: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.targets)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise PlanError(self.source, self.problems)


_INDEX = re.compile(r"\.(\d+)\.")


def collapse(names) -> list[str]:
    """Readable name lists: ``transformer_blocks.{n}.attn1.sr.weight [n=14..27]`` instead of 14 lines."""
    groups: dict[str, list[int]] = {}
    order = []
    for name in names:
        m = _INDEX.search(name)
        key = _INDEX.sub(".{n}.", name, count=1) if m else name
        if key not in groups:
            order.append(key)
            groups[key] = []
        if m:
            groups[key].append(int(m.group(1)))
    out = []
    for key in order:
        idx = sorted(set(groups[key]))
        if len(idx) <= 1:
            out.append(key.replace("{n}", str(idx[0])) if idx else key)
        elif idx == list(range(idx[0], idx[-1] + 1)):
            out.append(f"{key} [n={idx[0]}..{idx[-1]}]")
        else:
            out.append(f"{key} [n={','.join(map(str, idx))}]")
    return out


def natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _target_dtype(name: str, source_dtype: str, policy: str | None, keep_fp32) -> str:
    if not policy or source_dtype not in FLOAT_DTYPES:
        return source_dtype
    if policy == "float16" and any(match(p, name) is not None for p in keep_fp32):
        return "float32"
    return policy


def build_plan(spec: Spec, source: Source, table: dict | None, extras=(), dtype: str = "keep") -> Plan:
    """Map every source key through ``spec`` and check the result against ``table`` (name -> shape); ``None``
    skips the network check (a backwards run, whose target is a torch layout)."""
    policy = DTYPE_POLICIES[dtype]
    plan = Plan(spec.name, spec.component, source.description)
    unmapped, pending = [], {}
    for key in sorted(source.infos, key=natural_key):
        hit = spec.first_rule(key)
        if hit is None:
            unmapped.append(key)
            continue
        rule, pattern, fields = hit
        if isinstance(rule, Drop):
            plan.dropped.append((key, rule.reason))
            continue
        if isinstance(rule, Alias):
            other = fill(rule.same_as, fields)
            if other in source.infos:
                if source.infos[other].shape != source.infos[key].shape:
                    plan.problems.append(f"{key} {source.infos[key].shape} should equal {other} "
                                         f"{source.infos[other].shape}")
                else:
                    plan.dropped.append((key, rule.reason))
                    plan.aliases.append((key, other))
                continue
            rule = Rename(rule.source, rule.target, rule.reason)  # the tied partner is absent: this one stands in
        gid = (id(rule), tuple(sorted(fields.items())))
        pending.setdefault(gid, (rule, fields, {}))[2][pattern] = key
    if unmapped:
        plan.problems.append(f"no rule for {len(unmapped)} source tensor(s): {', '.join(collapse(unmapped))}")

    filled: dict[str, str] = {}
    for rule, fields, members in pending.values():
        absent = [fill(p, fields) for p in rule.sources if p not in members]
        if absent:
            plan.problems.append(f"incomplete group for {fill(rule.targets[0], fields)}: missing {', '.join(absent)}")
            continue
        keys = tuple(members[p] for p in rule.sources)
        group = Group(rule, keys, tuple(fill(t, fields) for t in rule.targets))
        infos = [source.infos[k] for k in keys]
        if len({i.dtype for i in infos}) > 1:
            plan.problems.append(f"{', '.join(keys)}: mixed dtypes {[i.dtype for i in infos]}")
            continue
        shapes = _group_shapes(rule, [i.shape for i in infos])
        if isinstance(shapes, str):
            plan.problems.append(f"{', '.join(keys)}: {shapes}")
            continue
        plan.groups.append(group)
        for name, shape in zip(group.targets, shapes):
            if name in filled:
                plan.problems.append(f"{name} filled twice: from {filled[name]} and {', '.join(keys)}")
                continue
            filled[name] = ", ".join(keys)
            dtype_out = _target_dtype(name, infos[0].dtype, policy, spec.keep_fp32)
            plan.targets.append(Target(name, shape, infos[0].dtype, dtype_out, group,
                                       extra=getattr(rule, "extra", False)))
    if table is not None:
        _check_against_table(plan, table, set(extras))
    return plan


def _group_shapes(rule, shapes):
    if isinstance(rule, Split):
        shape, n, axis = shapes[0], len(rule.targets), rule.axis
        if len(shape) <= axis or shape[axis] % n:
            return f"shape {shape} cannot be split in {n} along axis {axis}"
        return [shape[:axis] + (shape[axis] // n,) + shape[axis + 1:]] * n
    if isinstance(rule, Concat):
        axis = rule.axis
        rest = {s[:axis] + s[axis + 1:] for s in shapes}
        if len(rest) > 1:
            return f"shapes {shapes} cannot be joined along axis {axis}"
        first = shapes[0]
        return [first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]]
    return [shapes[0]]


def _check_against_table(plan: Plan, table: dict, extras: set) -> None:
    foreign, notes, wrong = [], set(), []
    by_name = {t.name: t for t in plan.targets}
    for t in plan.targets:
        if t.extra:
            if t.name not in extras:
                foreign.append(t.name)
            continue
        if t.name not in table:
            foreign.append(t.name)
            if getattr(t.group.rule, "note", ""):
                notes.add(t.group.rule.note)
        elif tuple(table[t.name]) != t.shape:
            wrong.append(f"{t.name}: {t.shape} from {', '.join(t.group.sources)}, network expects "
                         f"{tuple(table[t.name])}")
    if foreign:
        msg = f"{len(foreign)} tensor(s) the network does not have: {', '.join(collapse(foreign))}"
        plan.problems.append(msg + (f" ({'; '.join(sorted(notes))})" if notes else ""))
    plan.problems.extend(wrong)
    missing = [n for n in sorted(table, key=natural_key) if n not in by_name]
    if missing:
        plan.problems.append(f"{len(missing)} network parameter(s) missing from the source: "
                             f"{', '.join(collapse(missing))}")
    order = {name: i for i, name in enumerate(sorted(table, key=natural_key))}
    plan.targets.sort(key=lambda t: (order.get(t.name, len(order)), natural_key(t.name)))


def _apply(group: Group, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    rule = group.rule
    if isinstance(rule, Split):
        return [c.contiguous() for c in torch.chunk(tensors[0], len(group.targets), dim=rule.axis)]
    if isinstance(rule, Concat):
        return [torch.cat(tensors, dim=rule.axis)]
    assert isinstance(rule, Rename)
    return [tensors[0]]


def stream_plan(plan: Plan, source: Source, writer, progress=None) -> dict[str, str]:
    """Write every target through ``writer`` in ``plan.targets`` order; returns name -> sha256.

    Targets of one group are produced together, so a fused source is read once; they are buffered only until
    their turn in the file order (which follows the group order for every layout we write).
    NaN/Inf in a source and fp16 overflow are collected over the whole run and raised together at the end.
    """
    by_name = {t.name: t for t in plan.targets}
    ready: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    digests: dict[str, str] = {}
    for target in plan.targets:
        if target.name not in ready:
            group = target.group
            tensors = []
            for key in group.sources:
                tensor = source.read(key)
                expected = source.infos[key]
                if tuple(tensor.shape) != expected.shape or tensor.dtype != TORCH_DTYPES[expected.dtype]:
                    raise DataError(f"{source.description}: {key} read as {tuple(tensor.shape)} {tensor.dtype}, "
                                    f"header said {expected.shape} {expected.dtype}")
                if expected.dtype in FLOAT_DTYPES:
                    nonfinite = _count_nonfinite(tensor)
                    if nonfinite:
                        bad.append(f"{key}: {nonfinite} NaN/Inf value(s)")
                tensors.append(tensor)
            for name, value in zip(group.targets, _apply(group, tensors)):
                ready[name] = _cast(by_name[name], value, bad)
            del tensors
        value = ready.pop(target.name)
        digests[target.name] = writer.write(target.name, value)
        if progress is not None:
            progress(target.nbytes)
        del value
    source.close()  # the alias check reads its own row blocks; drop the stream's mapped pages first
    for copy, kept in plan.aliases:
        if not _equal_in_chunks(source, copy, kept):
            bad.append(f"{copy} is not a tied copy of {kept}: their values differ, dropping it would lose data")
    if bad:
        raise DataError(f"{plan.source}: {len(bad)} tensor(s) cannot be converted: " + "; ".join(bad))
    return digests


def _equal_in_chunks(source: Source, a: str, b: str, chunk_bytes: int = 64 * 2**20) -> bool:
    """Byte equality of two same-shaped source tensors, compared a block of rows at a time."""
    info = source.infos[a]
    rows = info.shape[0] if info.shape else 1
    step = max(1, rows * chunk_bytes // max(info.nbytes, 1))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        if not torch.equal(source.read_rows(a, start, stop), source.read_rows(b, start, stop)):
            return False
    return True


# value checks run over flat blocks: a whole-tensor isfinite/abs would allocate temporaries as large as the tensor
# (bf16 is widened on CPU), several times the largest tensor at T5-XXL's 251 MiB embedding
CHECK_BLOCK = 4 * 2**20


def _blocks(tensor: torch.Tensor):
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), CHECK_BLOCK):
        yield flat[start:start + CHECK_BLOCK]


def _count_nonfinite(tensor: torch.Tensor) -> int:
    return sum(int((~torch.isfinite(block)).sum()) for block in _blocks(tensor))


def _abs_max(tensor: torch.Tensor) -> float:
    return max((float(block.abs().max()) for block in _blocks(tensor)), default=0.0)


def _cast(target: Target, value: torch.Tensor, bad: list[str]) -> torch.Tensor:
    if target.dtype == target.source_dtype:
        return value
    if target.dtype == "float16" and target.source_dtype in ("float32", "float64", "bfloat16"):
        peak = _abs_max(value)
        if peak > FP16_MAX:
            bad.append(f"{target.name}: |x| up to {peak:.4g} overflows fp16 (max {FP16_MAX:g})")
    return value.to(TORCH_DTYPES[target.dtype]).contiguous()


def run_in_memory(spec: Spec, tensors: dict[str, torch.Tensor], table: dict | None = None, extras=(),
                  dtype: str = "keep") -> dict[str, torch.Tensor]:
    """The same plan and stream on in-memory tensors: backwards runs (``spec.inverse()``) and round trips."""
    from .sources import DictSource

    source = DictSource(tensors)
    plan = build_plan(spec, source, table, extras, dtype)
    plan.raise_if_problems()
    writer = TensorDictWriter([(t.name, t.dtype, t.shape) for t in plan.targets])
    stream_plan(plan, source, writer)
    writer.close()
    return writer.tensors
