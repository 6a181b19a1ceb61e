"""Key-map rules as data. A spec is an ordered list of rules; the first rule whose source pattern matches a key
decides its fate. Every rule has an inverse, so MindSpore -> torch is the same spec run backwards.

Patterns are dotted names with ``{field}`` placeholders for one name segment (``blocks.{n}.attn.proj.{p}``; the
field ``{path}`` spans any number of segments): the same string matches a key and formats the result, which is
what makes every rule invertible by swapping sides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

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


@dataclass(frozen=True)
class Rename:
    """One source tensor becomes one target tensor, bytes unchanged. ``extra`` marks a target that is kept
    beside the network's parameters (a buffer the network does not use at inference)."""

    source: str
    target: str
    note: str = ""
    extra: bool = False

    @property
    def sources(self):
        return (self.source,)

    @property
    def targets(self):
        return (self.target,)

    def inverse(self):
        return Rename(self.target, self.source, self.note, self.extra)


@dataclass(frozen=True)
class Split:
    """One fused source tensor is cut into equal chunks along ``axis`` (qkv -> to_q, to_k, to_v)."""

    source: str
    targets: tuple[str, ...]
    axis: int = 0
    note: str = ""

    @property
    def sources(self):
        return (self.source,)

    def inverse(self):
        return Concat(self.targets, self.source, self.axis, self.note)


@dataclass(frozen=True)
class Concat:
    """Several source tensors are joined along ``axis`` into one (to_q, to_k, to_v -> qkv)."""

    sources: tuple[str, ...]
    target: str
    axis: int = 0
    note: str = ""

    @property
    def targets(self):
        return (self.target,)

    def inverse(self):
        return Split(self.target, self.sources, self.axis, self.note)


@dataclass(frozen=True)
class Drop:
    """A source tensor that is deliberately not converted, with the reason recorded in the manifest."""

    source: str
    reason: str

    @property
    def sources(self):
        return (self.source,)

    targets = ()

    def inverse(self):
        return None  # nothing on the target side to map back


@dataclass(frozen=True)
class Alias:
    """A tied copy of another source tensor (T5's ``encoder.embed_tokens.weight`` is ``shared.weight``). When the
    other is present this one is checked equal to it, byte for byte, and dropped; when it is absent this one is
    renamed to ``target`` in its place. The inverse writes only the other name, as the torch side ties on load."""

    source: str
    same_as: str
    target: str
    reason: str

    @property
    def sources(self):
        return (self.source,)

    @property
    def targets(self):
        return (self.target,)

    def inverse(self):
        return None


@dataclass(frozen=True)
class Spec:
    """An ordered rule list for one (source layout, component)."""

    name: str
    component: str
    rules: tuple
    # targets that stay fp32 when the dtype policy asks for fp16 (T5's wo, as transformers keeps it)
    keep_fp32: tuple = ()

    def first_rule(self, key: str):
        for rule in self.rules:
            for pattern in rule.sources:
                fields = match(pattern, key)
                if fields is not None:
                    return rule, pattern, fields
        return None

    def inverse(self) -> "Spec":
        inverted = tuple(r for r in (rule.inverse() for rule in self.rules) if r is not None)
        return Spec(f"{self.name}-inverse", self.component, inverted, ())


def identity(note: str = "same name on both sides") -> Rename:
    return Rename("{path}", "{path}", note)
