"""Tensor and module names in messages and reports: natural ordering, and lists folded over block indices
(``transformer_blocks.{n}.attn1.sr.weight [n=14..27]`` instead of 14 lines)."""
from __future__ import annotations

import re

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def natural_key(name: str):
    """Sort key that orders ``block.10`` after ``block.9``."""
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def block_pattern(name: str) -> tuple[str, int | None]:
    """(name with its first block index replaced by ``{n}``, that index or None)."""
    m = _INDEX.search(name)
    if not m:
        return name, None
    return name[:m.start()] + ".{n}" + name[m.end():], int(m.group(1))


def group_by_block(items, name=lambda item: item) -> list[tuple[str, list[int], list]]:
    """Items grouped by ``block_pattern`` of their name, in first-seen order: (pattern, indices, items)."""
    groups: dict[str, tuple[list[int], list]] = {}
    for item in items:
        pattern, index = block_pattern(name(item))
        indices, members = groups.setdefault(pattern, ([], []))
        if index is not None:
            indices.append(index)
        members.append(item)
    return [(pattern, indices, members) for pattern, (indices, members) in groups.items()]


def index_range(indices) -> str:
    """``0..27`` for a contiguous run, else the indices listed."""
    idx = sorted(set(indices))
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}..{idx[-1]}"
    return ",".join(map(str, idx))


def fold(names) -> list[str]:
    """Names folded over their first block index, order kept."""
    out = []
    for pattern, indices, _ in group_by_block(names):
        idx = sorted(set(indices))
        if len(idx) <= 1:
            out.append(pattern.replace("{n}", str(idx[0])) if idx else pattern)
        else:
            out.append(f"{pattern} [n={index_range(idx)}]")
    return out
