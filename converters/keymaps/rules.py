"""Key-map rules as data. A spec is an ordered list of rules; the first rule whose source pattern matches a key
decides its fate. Every rule kind owns its behaviour (transformers' ``ConversionOps`` pattern): how it resolves at
plan time, the target shapes it predicts, how it transforms the tensors, its manifest op name, and its inverse, so
MindSpore -> torch is the same spec run backwards and the engine needs no branch per rule kind.

Patterns are dotted names with ``{field}`` placeholders for one name segment (``blocks.{n}.attn.proj.{p}``; the
field ``{path}`` spans any number of segments): the same string matches a key and formats the result, which is
what makes every rule invertible by swapping sides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_FIELD = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
    parts, pos, seen = [], 0, set()
    for m in _FIELD.finditer(pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        body = ".+" if name == "path" else "[^.]+"
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{body})")
        seen.add(name)
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts) + r"\Z")


def match(pattern: str, key: str) -> dict | None:
    m = _regex(pattern).match(key)
    return m.groupdict() if m else None


def fill(pattern: str, fields: dict) -> str:
    return pattern.format(**fields)


def _nbytes(shape, itemsize: int) -> int:
    n = itemsize
    for d in shape:
        n *= int(d)
    return n


class Rule:
    """Base of every rule kind, a one-to-one byte copy by default. Each kind has ``sources`` and ``targets`` (tuples
    of patterns) and a ``note``."""

    note: str = ""
    extra: bool = False  # the target is kept beside the network's parameters (a buffer unused at inference)

    def resolve(self, key: str, fields: dict, infos: dict, plan) -> "Rule | None":
        """The rule that converts ``key`` (usually itself), or None when the key is consumed at plan time (dropped,
        or checked as a tied copy); records what it decides in ``plan``."""
        return self

    def target_shapes(self, shapes: list[tuple]) -> list[tuple] | str:
        """Predicted target shapes from the source shapes, or a problem message."""
        return [shapes[0]]

    def apply(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [arrays[0]]

    def byte_pieces(self, shapes: list[tuple], itemsize: int) -> list[list[tuple[int, int, int]]] | None:
        """What ``apply`` does as byte ranges, when it is one: per target, the (source index, byte offset, byte
        length) pieces of the C-order source bytes it is made of, in order; None when it is not (then the stream
        goes through ``apply``). A kind that does not say is not a byte range."""
        return None

    def op(self, sources: tuple[str, ...], targets: tuple[str, ...]) -> str:
        """The op name recorded in the manifest for one application."""
        return "rename" if sources != targets else "copy"

    def inverse(self) -> "Rule | None":
        raise NotImplementedError


class OneSource(Rule):
    """A rule kind that consumes one source tensor, ``source``."""

    @property
    def sources(self):
        return (self.source,)


@dataclass(frozen=True, eq=False)
class Rename(OneSource):
    """One source tensor becomes one target tensor, bytes unchanged."""

    source: str
    target: str
    note: str = ""
    extra: bool = False
    read_only: bool = False  # a legacy spelling that is read but never written back

    @property
    def targets(self):
        return (self.target,)

    def byte_pieces(self, shapes, itemsize):
        return [[(0, 0, _nbytes(shapes[0], itemsize))]]

    def inverse(self):
        return None if self.read_only else Rename(self.target, self.source, self.note, self.extra)


@dataclass(frozen=True, eq=False)
class Split(OneSource):
    """One fused source tensor is cut into equal chunks along ``axis`` (qkv -> to_q, to_k, to_v)."""

    source: str
    targets: tuple[str, ...]
    axis: int = 0
    note: str = ""

    def target_shapes(self, shapes):
        shape, n, axis = shapes[0], len(self.targets), self.axis
        if len(shape) <= axis or shape[axis] % n:
            return f"shape {shape} cannot be split in {n} along axis {axis}"
        return [shape[:axis] + (shape[axis] // n,) + shape[axis + 1:]] * n

    def apply(self, arrays):
        return [np.ascontiguousarray(c) for c in np.split(arrays[0], len(self.targets), axis=self.axis)]

    def byte_pieces(self, shapes, itemsize):
        if _nbytes(shapes[0][:self.axis], 1) != 1:  # only a cut along the outermost (non-trivial) axis is a range
            return None
        part = _nbytes(shapes[0], itemsize) // len(self.targets)
        return [[(0, i * part, part)] for i in range(len(self.targets))]

    def op(self, sources, targets):
        return f"split({len(targets)}, axis={self.axis})"

    def inverse(self):
        return Concat(self.targets, self.source, self.axis, self.note)


@dataclass(frozen=True, eq=False)
class Concat(Rule):
    """Several source tensors are joined along ``axis`` into one (to_q, to_k, to_v -> qkv)."""

    sources: tuple[str, ...]
    target: str
    axis: int = 0
    note: str = ""

    @property
    def targets(self):
        return (self.target,)

    def target_shapes(self, shapes):
        axis = self.axis
        if len({s[:axis] + s[axis + 1:] for s in shapes}) > 1:
            return f"shapes {shapes} cannot be joined along axis {axis}"
        first = shapes[0]
        return [first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]]

    def apply(self, arrays):
        return [np.concatenate(arrays, axis=self.axis)]

    def byte_pieces(self, shapes, itemsize):
        if any(_nbytes(s[:self.axis], 1) != 1 for s in shapes):
            return None
        return [[(i, 0, _nbytes(s, itemsize)) for i, s in enumerate(shapes)]]

    def op(self, sources, targets):
        return f"concat(axis={self.axis})"

    def inverse(self):
        return Split(self.target, self.sources, self.axis, self.note)


@dataclass(frozen=True, eq=False)
class Drop(OneSource):
    """A source tensor that is deliberately not converted, with the reason recorded in the manifest."""

    source: str
    reason: str

    targets = ()

    def resolve(self, key, fields, infos, plan):
        plan.dropped.append((key, self.reason))
        return None

    def inverse(self):
        return None  # nothing on the target side to map back


@dataclass(frozen=True, eq=False)
class Alias(OneSource):
    """A tied copy of another source tensor (T5's ``encoder.embed_tokens.weight`` is ``shared.weight``). When the
    other is present this one is checked equal to it, byte for byte (after the stream), and dropped; when it is
    absent this one is renamed to ``target`` in its place. The inverse (``Tie``) writes both names, as
    transformers' own files carry both."""

    source: str
    same_as: str
    target: str
    reason: str
    extra: bool = False

    @property
    def targets(self):
        return (self.target,)

    def resolve(self, key, fields, infos, plan):
        other = fill(self.same_as, fields)
        if other not in infos:  # the tied partner is absent: this one stands in
            return Rename(self.source, self.target, self.reason, self.extra)
        if infos[other].shape != infos[key].shape:
            plan.problems.append(f"{key} {infos[key].shape} should equal {other} {infos[other].shape}")
        else:
            plan.dropped.append((key, self.reason))
            plan.aliases.append((key, other))
        return None

    def inverse(self):
        if self.target != self.same_as:
            return None  # a stand-in under a third name: nothing to write back
        return Tie(self.target, (self.same_as, self.source), self.reason)


@dataclass(frozen=True, eq=False)
class Tie(Rule):
    """One source tensor written under several names, each a copy (``shared.weight`` and its tied
    ``encoder.embed_tokens.weight`` in transformers' T5 layout)."""

    source: str
    targets: tuple[str, ...]
    note: str = ""

    @property
    def sources(self):
        return (self.source,)

    def target_shapes(self, shapes):
        return [shapes[0]] * len(self.targets)

    def apply(self, arrays):
        return [arrays[0]] * len(self.targets)

    def byte_pieces(self, shapes, itemsize):
        return [[(0, 0, _nbytes(shapes[0], itemsize))]] * len(self.targets)

    def op(self, sources, targets):
        return f"tie({len(targets)})"

    def inverse(self):
        return Alias(self.targets[1], self.targets[0], self.source, self.note)


@dataclass(frozen=True, eq=False)
class Refuse(Drop):
    """A source tensor this layout cannot convert faithfully: it stops the plan, with the reason."""

    def resolve(self, key, fields, infos, plan):
        plan.problems.append(f"{key}: {self.reason}")
        return None


@dataclass(frozen=True, eq=False)
class Generated(Rule):
    """A target computed rather than read (the original's ``pos_embed`` buffer, from the config); added to a plan
    by ``Plan.add_generated``, recorded in the manifest with ``note``."""

    target: str
    shape: tuple[int, ...]
    dtype: str
    make: object  # () -> np.ndarray
    note: str = ""

    sources = ()

    @property
    def targets(self):
        return (self.target,)

    def apply(self, arrays):
        value = np.ascontiguousarray(self.make())
        if value.shape != tuple(self.shape):
            raise RuntimeError(f"{self.target}: computed {value.shape}, planned {self.shape}")
        return [value]

    def op(self, sources, targets):
        return f"computed ({self.note})"

    def inverse(self):
        return Drop(self.target, f"recomputed on the other side ({self.note})")


@dataclass(frozen=True)
class Spec:
    """An ordered rule list for one (source layout, component)."""

    name: str
    component: str
    rules: tuple

    def first_rule(self, key: str):
        for rule in self.rules:
            for pattern in rule.sources:
                fields = match(pattern, key)
                if fields is not None:
                    return rule, pattern, fields
        return None

    def inverse(self) -> "Spec":
        inverted = tuple(r for r in (rule.inverse() for rule in self.rules) if r is not None)
        return Spec(f"{self.name}-inverse", self.component, inverted)


def identity(note: str = "same name on both sides") -> Rename:
    return Rename("{path}", "{path}", note)
