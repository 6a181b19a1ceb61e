"""Plan, check, stream: the one conversion mechanism behind every component and layout.

1. ``build_plan`` reads only names/shapes/dtypes, applies the spec's rules and checks the result against the
   target network's parameter table; every problem is collected before anything is read or written.
2. ``stream_plan`` reads, checks, transforms and writes one target at a time: byte ranges of the source straight
   into the writer's staging buffers where the rule and the source allow it, one rule group at a time otherwise.

Tensors are numpy arrays (bfloat16 through ml_dtypes) or byte ranges; each rule kind owns its shape prediction, its
transformation and whether that is a byte range (``keymaps.rules``), so the engine has no branch per rule kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pixart_core import dtypes
from pixart_core.errors import DataError, PlanError
from pixart_core.naming import fold, natural_key

from . import checks
from .keymaps.rules import Spec, fill, match
from .ranges import RangeReader, file_ranges, spans_equal
from .sources import DictSource, Source, numpy_to_torch
from .staging import FileHasher, remember
from .writers import TensorDictWriter

DTYPE_POLICIES = {"keep": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Group:
    """One application of one rule: the source keys it consumes and the targets it fills."""

    rule: object
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def op(self) -> str:
        return self.rule.op(self.sources, self.targets)


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
        return dtypes.nbytes(self.dtype, self.shape)


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

    def add_generated(self, rule) -> None:
        """A target computed rather than read (``keymaps.rules.Generated``), written after the others."""
        if any(t.name == rule.target for t in self.targets):
            self.problems.append(f"{rule.target} is both in the source and computed")
            return
        group = Group(rule, (), (rule.target,))
        self.groups.append(group)
        self.targets.append(Target(rule.target, tuple(rule.shape), rule.dtype, rule.dtype, group))


def _target_dtype(name: str, source_dtype: str, policy: str | None, keep_fp32) -> str:
    if not policy or source_dtype not in dtypes.FLOAT_NAMES:
        return source_dtype
    if policy == "float16" and any(match(p, name) is not None for p in keep_fp32):
        return "float32"
    return policy


def build_plan(spec: Spec, source: Source, table: dict | None, extras=(), dtype: str = "keep",
               keep_fp32=()) -> Plan:
    """Map every source key through ``spec`` and check the result against ``table`` (name -> shape); ``None``
    skips the network check (a backwards run, whose target is a torch layout). ``keep_fp32``: target patterns
    that stay fp32 when ``dtype`` is fp16 (the component's dtype policy)."""
    policy = DTYPE_POLICIES[dtype]
    plan = Plan(spec.name, spec.component, source.description)
    unmapped, pending = [], {}
    for key in sorted(source.infos, key=natural_key):
        hit = spec.first_rule(key)
        if hit is None:
            unmapped.append(key)
            continue
        rule, pattern, fields = hit
        rule = rule.resolve(key, fields, source.infos, plan)
        if rule is None:
            continue
        gid = (id(hit[0]), tuple(sorted(fields.items())))
        pending.setdefault(gid, (rule, fields, {}))[2][pattern] = key
    if unmapped:
        plan.problems.append(f"no rule for {len(unmapped)} source tensor(s): {', '.join(fold(unmapped))}")

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
        shapes = rule.target_shapes([i.shape for i in infos])
        if isinstance(shapes, str):
            plan.problems.append(f"{', '.join(keys)}: {shapes}")
            continue
        plan.groups.append(group)
        for name, shape in zip(group.targets, shapes):
            if name in filled:
                plan.problems.append(f"{name} filled twice: from {filled[name]} and {', '.join(keys)}")
                continue
            filled[name] = ", ".join(keys)
            dtype_out = _target_dtype(name, infos[0].dtype, policy, keep_fp32)
            plan.targets.append(Target(name, shape, infos[0].dtype, dtype_out, group, extra=rule.extra))
    if table is not None:
        _check_against_table(plan, table, set(extras))
    return plan


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
            if t.group.rule.note:
                notes.add(t.group.rule.note)
        elif tuple(table[t.name]) != t.shape:
            wrong.append(f"{t.name}: {t.shape} from {', '.join(t.group.sources)}, network expects "
                         f"{tuple(table[t.name])}")
    if foreign:
        msg = f"{len(foreign)} tensor(s) the network does not have: {', '.join(fold(foreign))}"
        plan.problems.append(msg + (f" ({'; '.join(sorted(notes))})" if notes else ""))
    plan.problems.extend(wrong)
    missing = [n for n in sorted(table, key=natural_key) if n not in by_name]
    if missing:
        plan.problems.append(f"{len(missing)} network parameter(s) missing from the source: "
                             f"{', '.join(fold(missing))}")
    order = {name: i for i, name in enumerate(sorted(table, key=natural_key))}
    plan.targets.sort(key=lambda t: (order.get(t.name, len(order)), natural_key(t.name)))


def stream_plan(plan: Plan, source: Source, writer, progress=None) -> dict[str, str]:
    """Write every target through ``writer`` in ``plan.targets`` order; returns name -> sha256.

    Into a staging writer (``writer.stages``: safetensors, ``.ckpt``) a target that is byte ranges of the source
    (``Rule.byte_pieces``, where the source stores its tensors as ``spans``) streams straight from the source
    files into the output buffers, checked and cast on the way (``converters.ranges``), while other threads hash
    the tensors, the output and the source files and write; every other target is produced whole by its rule
    (``produce_group``: fused siblings wait in memory until their turn in the file order, which follows the group
    order for every layout we write), with the same checks. NaN/Inf in a source and fp16 overflow are collected
    over the whole run and raised together at the end, after the tied copies are compared.
    """
    by_name = {t.name: t for t in plan.targets}
    ready: dict[str, np.ndarray] = {}
    bad: list[str] = []
    digests: dict[str, str] = {}
    findings = checks.Findings()
    staged = getattr(writer, "stages", False)
    reader = RangeReader(source, findings) if staged else None
    hasher = FileHasher(source.files) if staged and source.files else None
    try:
        for target in plan.targets:
            value = reader.producer(target) if reader is not None else None
            if value is None:
                if target.name not in ready:
                    ready.update(produce_group(target.group, source, by_name, bad))
                value = ready.pop(target.name)
            digest = writer.write(target.name, value)
            if digest is not None:
                digests[target.name] = digest
            if progress is not None:
                progress(target.nbytes)
            del value
        if staged:
            digests.update(writer.digests())
        if hasher is not None:
            remember(hasher.result())
    finally:
        if hasher is not None:
            hasher.cancel()
        if reader is not None:
            reader.close()
        source.close()  # the alias check reads its own row blocks; drop the stream's open files first
    bad.extend(findings.messages())
    bad.extend(check_aliases(plan, source))
    if bad:
        raise DataError(f"{plan.source}: {len(bad)} tensor(s) cannot be converted: " + "; ".join(bad))
    return digests


def produce_group(group: Group, source: Source, by_name: dict, bad: list[str]) -> dict[str, np.ndarray]:
    """Read one group's source tensors, check them, apply its rule and cast: target name -> array. NaN/Inf and
    fp16 overflow are appended to ``bad``."""
    arrays = []
    findings = checks.Findings()
    for key in group.sources:
        array = source.read(key)
        expected = source.infos[key]
        if tuple(array.shape) != expected.shape or dtypes.name_of_numpy(array.dtype) != expected.dtype:
            raise DataError(f"{source.description}: {key} read as {tuple(array.shape)} {array.dtype}, "
                            f"header said {expected.shape} {expected.dtype}")
        if expected.dtype in dtypes.FLOAT_NAMES:
            checks.check_array(array, expected.dtype, key, findings)
        arrays.append(array)
    out = {name: _cast(by_name[name], value, findings)
           for name, value in zip(group.targets, group.rule.apply(arrays))}
    bad.extend(findings.messages())
    return out


def check_aliases(plan: Plan, source: Source) -> list[str]:
    """The tied copies a plan dropped must equal what they are tied to, byte for byte."""
    return [f"{copy} is not a tied copy of {kept}: their values differ, dropping it would lose data"
            for copy, kept in plan.aliases if not _tied_equal(source, copy, kept)]


class PlanSource(Source):
    """The targets of a checked plan as a source: reading a target reads and transforms its group (its fused
    siblings wait until they are read). Chains a plan into a MindSpore-named intermediate that a second plan
    (a torch layout's spec inverted) reads, one group at a time; ``bad`` collects what ``produce_group`` finds."""

    def __init__(self, plan: Plan, source: Source):
        from .sources import TensorInfo

        self.plan, self.source = plan, source
        self.files = source.files
        self.kind = source.kind
        self.description = source.description
        self.infos = {t.name: TensorInfo(t.name, t.shape, t.dtype, None) for t in plan.targets}
        self._by_name = {t.name: t for t in plan.targets}
        self._ready: dict[str, np.ndarray] = {}
        self.bad: list[str] = []

    def read(self, key):
        if key not in self._ready:
            self._ready.update(produce_group(self._by_name[key].group, self.source, self._by_name, self.bad))
        return self._ready.pop(key)

    def spans(self, key):
        """A target that is byte ranges of the source (a renamed tensor, an axis-0 part) is those ranges: the
        second plan then streams it from the source files like a forward conversion (checked on the way)."""
        target = self._by_name[key]
        group = target.group
        if target.dtype != target.source_dtype or not group.sources:
            return None
        shapes = [self.source.infos[k].shape for k in group.sources]
        pieces = group.rule.byte_pieces(shapes, dtypes.get(target.source_dtype).itemsize)
        if pieces is None:
            return None
        out = []
        for i, begin, n in pieces[group.targets.index(key)]:
            spans = self.source.spans(group.sources[i])
            if spans is None:
                return None
            out.extend(file_ranges(spans, begin, n))
        return out

    def close(self):
        self._ready = {}
        self.source.close()


ALIAS_BLOCK = 16 * 2**20


def _tied_equal(source: Source, a: str, b: str) -> bool:
    """Byte equality of two same-shaped source tensors: their byte ranges compared as uint64 words, or (a source
    without byte ranges) a block of rows at a time."""
    spans_a, spans_b = source.spans(a), source.spans(b)
    if spans_a is not None and spans_b is not None:
        reader = RangeReader(source, checks.Findings())
        try:
            return spans_equal(reader, spans_a, spans_b, ALIAS_BLOCK)
        finally:
            reader.close()
    return _equal_in_chunks(source, a, b)


def _equal_in_chunks(source: Source, a: str, b: str, chunk_bytes: int = ALIAS_BLOCK) -> bool:
    info = source.infos[a]
    rows = info.shape[0] if info.shape else 1
    step = max(1, rows * chunk_bytes // max(info.nbytes, 1))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        x, y = source.read_rows(a, start, stop), source.read_rows(b, start, stop)
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            return False
    return True


def _cast(target: Target, value: np.ndarray, findings: checks.Findings) -> np.ndarray:
    if target.dtype == target.source_dtype:
        return value
    if target.dtype == "float16" and target.source_dtype in ("float32", "float64", "bfloat16"):
        checks.check_cast(value, target.source_dtype, target.name, findings)
    with np.errstate(over="ignore"):  # an overflow is reported above; the run fails before the file is kept
        return np.ascontiguousarray(value.astype(dtypes.numpy_dtype(target.dtype)))


def run_in_memory(spec: Spec, tensors: dict, table: dict | None = None, extras=(), dtype: str = "keep",
                  keep_fp32=()) -> dict:
    """The same plan and stream on in-memory tensors: backwards runs (``spec.inverse()``) and round trips. Returns
    torch tensors when given torch tensors, numpy arrays otherwise."""
    source = DictSource(tensors)
    plan = build_plan(spec, source, table, extras, dtype, keep_fp32)
    plan.raise_if_problems()
    writer = TensorDictWriter([(t.name, t.dtype, t.shape) for t in plan.targets])
    stream_plan(plan, source, writer)
    writer.close()
    if tensors and not isinstance(next(iter(tensors.values())), np.ndarray):
        return {k: numpy_to_torch(v) for k, v in writer.tensors.items()}
    return writer.tensors
