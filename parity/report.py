"""Parity reports: a Markdown summary (repeated blocks collapsed), ``parity.json`` with every tap of every case,
and an HTML page with one PNG plot of error against depth per component."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from pixart_core.naming import group_by_block


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.2e}"


def collapse_rows(summary: list[dict]) -> list[dict]:
    """Rows of repeated blocks merged: ``transformer_blocks.{n}.attn1 (n=0..27)`` with the worst block named."""
    out = []
    for pattern, indices, rows in group_by_block(summary, name=lambda row: row["tap"]):
        worst = rows[0]
        for row in rows[1:]:
            if row["rel_l2"] > worst["rel_l2"]:
                worst = row
        label = f"{pattern} (n={min(indices)}..{max(indices)})" if indices else pattern
        out.append({"tap": pattern, "count": len(rows), "worst": worst, "ok": all(r["ok"] for r in rows),
                    "indices": indices, "label": label})
    return out


def mode_line(comp: dict) -> str:
    if comp.get("mode") == "streamed":
        return "streamed block by block (one block of each side in memory)"
    return "whole networks"


def markdown(report: dict) -> str:
    lines = [f"# Parity: {report['output']}", "",
             f"source `{report['source']}`, MindSpore {report['dtype']} against fp32 torch, tolerance relative L2 "
             f"<= {report['tolerance']:g}: **{'PASS' if report['ok'] else 'FAIL'}**", ""]
    for name, comp in report["components"].items():
        verdict = "ok" if comp["ok"] else f"FAIL, first divergence at `{comp['first_failure']}`"
        secs = comp["seconds"]
        lines += [f"## {name}: {verdict}", "",
                  f"cases: {', '.join(comp['cases'])}; {mode_line(comp)}; torch {secs['torch']:.1f} s, "
                  f"MindSpore {secs['mindspore']:.1f} s", ""]
        if comp.get("local"):
            values = [r["rel_l2"] for r in comp["local"]]
            lines += [f"each block fed the torch block's input (the error it adds by itself): relative L2 "
                      f"{_fmt(min(values))} .. {_fmt(max(values))}, worst at `{max(comp['local'], key=lambda r: r['rel_l2'])['tap']}`", ""]
        lines += ["| tap | worst rel L2 | max abs | cosine | NaN/Inf | shape | |", "|---|---|---|---|---|---|---|"]
        for g in collapse_rows(comp["summary"]):
            w = g["worst"]
            where = f" at {w['tap']}" if g["count"] > 1 else ""
            lines.append(f"| `{g['label']}` | {_fmt(w['rel_l2'])}{where} | {_fmt(w.get('max_abs'))} | "
                         f"{w.get('cosine', float('nan')):.8f} | {w['nan']}/{w['inf']} | {tuple(w['shape'])} | "
                         f"{'ok' if g['ok'] else '**over**'} |")
        lines.append("")
    sampling = report.get("sampling")
    if sampling:
        lines += ["## sampling", "",
                  f"{sampling['steps']} DPM-Solver++ steps, guidance {sampling['guidance']}, prompt "
                  f"{sampling['prompt']!r}: final latent relative L2 {_fmt(sampling['final_latent_rel_l2'])} "
                  f"(tolerance {sampling['tolerance']:g}), decoded image PSNR {sampling['image_psnr_db']:.1f} dB: "
                  f"**{'ok' if sampling['ok'] else 'FAIL'}**", ""]
    return "\n".join(lines)


def plot(comp: dict, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comp["summary"]
    values = [max(r["rel_l2"], 1e-12) if math.isfinite(r["rel_l2"]) else 1.0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.12 + 4), 3.6))
    ax.semilogy(range(len(rows)), values, marker="o", markersize=3, linewidth=1, label="tap (accumulated over depth)")
    ax.axhline(comp["tolerance"], color="red", linestyle="--", linewidth=1, label=f"tolerance {comp['tolerance']:g}")
    position = {r["tap"]: i for i, r in enumerate(rows)}
    local = [(position[r["tap"]], max(r["rel_l2"], 1e-12)) for r in comp.get("local", []) if r["tap"] in position]
    if local:
        ax.semilogy(*zip(*local), marker="s", markersize=3, linewidth=1, color="tab:green",
                    label="block fed torch's input (local)")
    bad = [i for i, r in enumerate(rows) if not r["ok"]]
    if bad:
        ax.scatter(bad, [values[i] for i in bad], color="red", zorder=3, label="over tolerance")
    step = max(1, len(rows) // 24)
    ax.set_xticks(range(0, len(rows), step))
    ax.set_xticklabels([rows[i]["tap"] for i in range(0, len(rows), step)], rotation=75, fontsize=6)
    ax.set_ylabel("relative L2 (worst case)")
    ax.set_title(f"{name}: MindSpore {comp['dtype']} vs torch fp32, by depth")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(report: dict, folder) -> dict[str, Path]:
    """``parity.json``, ``parity.md``, ``parity.html`` and one ``<component>.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "parity.json", "markdown": folder / "parity.md", "html": folder / "parity.html"}
    paths["json"].write_text(json.dumps(report, indent=1, default=float) + "\n")
    md = markdown(report)
    paths["markdown"].write_text(md + "\n")
    body = [f"<h1>Parity: {html.escape(report['output'])}</h1>",
            f"<p>source {html.escape(report['source'])}; MindSpore {report['dtype']} vs torch fp32; tolerance "
            f"{report['tolerance']:g}: <b>{'PASS' if report['ok'] else 'FAIL'}</b></p>"]
    for name, comp in report["components"].items():
        png = folder / f"{name}.png"
        plot(comp, name, png)
        paths[name] = png
        body.append(f"<h2>{name}: {'ok' if comp['ok'] else 'first divergence at ' + html.escape(comp['first_failure'])}"
                    f"</h2><p>{mode_line(comp)}</p><img src='{png.name}' alt='{name} error by depth'>")
        if comp.get("local"):
            body.append("<p>Each block fed the torch block's input (the error it adds by itself):</p><table border=1 "
                        "cellspacing=0 cellpadding=3><tr><th>block</th><th>worst case</th><th>rel L2</th>"
                        "<th>max abs</th></tr>" + "".join(
                            f"<tr><td>{html.escape(r['tap'])}</td><td>{html.escape(r['worst_case'])}</td>"
                            f"<td>{_fmt(r['rel_l2'])}</td><td>{_fmt(r.get('max_abs'))}</td></tr>"
                            for r in comp["local"]) + "</table>")
        body.append("<table border=1 cellspacing=0 cellpadding=3><tr><th>tap</th><th>worst case</th><th>rel L2</th>"
                    "<th>max abs</th><th>mean abs</th><th>cosine</th><th>NaN</th><th>Inf</th><th>shape</th>"
                    "<th>dtype</th></tr>")
        for r in comp["summary"]:
            style = "" if r["ok"] else " style='background:#fcc'"
            body.append(f"<tr{style}><td>{html.escape(r['tap'])}</td><td>{html.escape(r.get('worst_case', ''))}</td>"
                        f"<td>{_fmt(r['rel_l2'])}</td><td>{_fmt(r.get('max_abs'))}</td>"
                        f"<td>{_fmt(r.get('mean_abs'))}</td><td>{r.get('cosine', float('nan')):.8f}</td>"
                        f"<td>{r['nan']}</td><td>{r['inf']}</td><td>{tuple(r['shape'])}</td>"
                        f"<td>{r.get('dtype', '-')}</td></tr>")
        body.append("</table>")
    if report.get("sampling"):
        s = report["sampling"]
        body.append(f"<h2>sampling</h2><p>{s['steps']} steps, guidance {s['guidance']}: final latent rel L2 "
                    f"{_fmt(s['final_latent_rel_l2'])}, image PSNR {s['image_psnr_db']:.1f} dB</p>")
    paths["html"].write_text("<!doctype html><meta charset='utf-8'><title>pixart-ms parity</title>"
                             + "\n".join(body) + "\n")
    return paths
