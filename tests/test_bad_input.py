"""The bad-input corpus: every way a user can hand the CLI something wrong, generated here at test time from the tiny
models, one case per row. Each row asserts the contract of README "Errors and exit codes": exit 2 (1 for a failed
check), exactly one line on stderr (progress bars aside), no traceback, nothing at the target (or the target that
was there unchanged), no leftovers beside it, and every source byte for byte as it was.

Rows run the CLI in-process (``run_cli``) unless they need a real process (file names that are not UTF-8); signals,
stale partial folders, the positive counterparts (fp16 weights pass parity and export, buckets are honoured) and
"no heavy import before an argument error" follow the corpus.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file, save_file

from converters.sources import read_safetensors_header

from .helpers import run_cli

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = "diffusion_pytorch_model.safetensors"
PROGRESS = re.compile(r"^[\w ]+: +\d+%\|")  # tqdm lines (a failure mid-stream closes the bar it started)
HEAVY = ("torch", "mindspore", "diffusers", "transformers")


# ----------------------------------------------------------------------------------------------------------------
# what every row asserts

@dataclass
class Case:
    args: list
    target: Path | None = None  # what the command would write
    sources: list = field(default_factory=list)  # must stay byte for byte as they were
    phrases: tuple = ()  # in the error line
    code: int = 2
    absent: list = field(default_factory=list)  # paths that must not exist afterwards (parents it would create)
    subprocess: bool = False


def snapshot(path: Path):
    """Everything about a path that a run could change: kind, bytes, names, symlink targets (never followed)."""
    path = Path(path)
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if path.is_file():
        return ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    if path.is_dir():
        return ("dir", tuple(sorted((str(Path(root, n).relative_to(path)), snapshot(Path(root, n)))
                                    for root, dirs, files in os.walk(path) for n in dirs + files)))
    return None


def run_sub(args) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOG_v": "3"}
    proc = subprocess.run([sys.executable, "-m", "pixart_ms", *[os.fsencode(str(a)) if isinstance(a, Path) else a
                                                               for a in args]],
                          capture_output=True, env=env, cwd=REPO, timeout=600)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def check(case: Case):
    watched = [Path(p) for p in case.sources]
    existed = case.target is not None and os.path.lexists(case.target)
    if existed:
        watched.append(case.target)
    before = {p: snapshot(p) for p in watched}
    if case.subprocess:
        code, stdout, stderr = run_sub(case.args)
    else:
        result = run_cli(*case.args)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert code == case.code, (code, stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr + stdout
    for phrase in case.phrases:
        assert phrase in lines[0], (phrase, lines[0])
    for path, state in before.items():
        assert snapshot(path) == state, f"{path} changed"
    if case.target is not None:
        if not existed:
            assert not os.path.lexists(case.target), f"{case.target} was written"
        parent = Path(os.path.abspath(case.target)).parent
        if parent.is_dir():
            left = [p.name for p in parent.iterdir() if p.name.startswith(f".{Path(case.target).name}.")]
            assert not left, f"left behind: {left}"
    for path in case.absent:
        assert not os.path.lexists(path), f"{path} was created"
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# the material rows are made of

@pytest.fixture(scope="module")
def export_dir(tiny_pipeline, tmp_path_factory):
    """A small export of the tiny pipeline (what infer needs, square bucket, no torch comparison)."""
    _, out, _ = tiny_pipeline
    folder = tmp_path_factory.mktemp("bad-input-export") / "export"
    result = run_cli("export", out, "-o", folder, "--components", "transformer,text_encoder,vae_decoder",
                     "--max-length", "16", "--no-torch-reference")
    assert result.exit_code == 0, result.output
    return folder


class Material:
    """Lazy access to the session's tiny models and a scratch folder, for the row builders."""

    def __init__(self, request, tmp: Path):
        self.request, self.tmp = request, tmp

    def __getattr__(self, name):
        return self.request.getfixturevalue(name)

    def copy(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        (shutil.copytree if Path(src).is_dir() else shutil.copyfile)(src, dst)
        return dst

    def state(self) -> dict:
        return torch.load(self.pixart_pth, weights_only=True)["state_dict"]

    def pth(self, name: str, state: dict) -> Path:
        path = self.tmp / name
        torch.save({"state_dict": state}, path)
        return path

    def config(self) -> Path:
        return self.pixart_diffusers_dir / "config.json"

    def folder_with_header(self, name: str, edit) -> Path:
        """A copy of the tiny diffusers folder whose safetensors header went through ``edit(header, data)``, which
        returns the new header bytes (JSON text) and data."""
        folder = self.copy(self.pixart_diffusers_dir, name)
        weights = folder / WEIGHTS
        header, start = read_safetensors_header(weights)
        raw = weights.read_bytes()
        text, data = edit(header, raw[start:])
        text = text.encode() if isinstance(text, str) else text
        weights.write_bytes(len(text).to_bytes(8, "little") + text + data)
        return folder

    def zip_without(self, name: str, suffix: str) -> Path:
        path = self.tmp / name
        with zipfile.ZipFile(self.pixart_pth) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                if not info.filename.endswith(suffix):
                    dst.writestr(info, src.read(info.filename))
        return path


def convert(src, out, *extra, **kw) -> Case:
    return Case(["convert", src, "-o", out, *extra], target=out, sources=[src], **kw)


def header_row(edit, *phrases):
    def build(m: Material):
        folder = m.folder_with_header("src", edit)
        return convert(folder, m.tmp / "out", phrases=(WEIGHTS, *phrases))
    return build


def _entry(header, name):
    return header[name]


def length_beyond_file(m: Material):
    folder = m.copy(m.pixart_diffusers_dir, "src")
    weights = folder / WEIGHTS
    raw = bytearray(weights.read_bytes())
    raw[:8] = (len(raw) * 2).to_bytes(8, "little")
    weights.write_bytes(bytes(raw))
    return convert(folder, m.tmp / "out", phrases=("runs past the end of the file",))


def overlapping(header, data):
    header["proj_out.bias"]["data_offsets"] = list(header["proj_out.weight"]["data_offsets"][:1]) + [
        header["proj_out.weight"]["data_offsets"][0] + 32 * 4]
    return json.dumps(header), data


def out_of_range(header, data):
    begin, end = header["proj_out.bias"]["data_offsets"]
    header["proj_out.bias"]["data_offsets"] = [len(data) + 4, len(data) + 4 + end - begin]
    return json.dumps(header), data


def zero_bytes(header, data):
    begin, _ = header["proj_out.bias"]["data_offsets"]
    header["proj_out.bias"].update(shape=[0], data_offsets=[begin, begin])
    return json.dumps(header), data


def duplicate_name(header, data):
    text = json.dumps(header)
    entry = json.dumps({"proj_out.bias": header["proj_out.bias"]})[1:-1]
    return text[:-1] + ", " + entry + "}", data


def sharded(m: Material, name: str) -> tuple[Path, dict]:
    folder = m.tmp / name
    m.pixart_model.save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    return folder, index


def missing_shard(m: Material):
    folder, index = sharded(m, "sharded")
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).unlink()
    return convert(folder, m.tmp / "out", phrases=("shard files missing", shard))


def tensor_in_two_shards(m: Material):
    folder, index = sharded(m, "sharded")
    first, last = sorted(set(index["weight_map"].values()))[0], sorted(set(index["weight_map"].values()))[-1]
    stolen = next(k for k, v in index["weight_map"].items() if v == first)
    tensors = load_file(folder / last)
    tensors[stolen] = load_file(folder / first)[stolen]
    save_file(tensors, folder / last)
    return convert(folder, m.tmp / "out", phrases=(stolen, "also in"))


def with_values(edit, *extra, phrases=()):
    def build(m: Material):
        state = m.state()
        edit(state)
        pth = m.pth("values.pth", state)
        return convert(pth, m.tmp / "out", "--config", m.config(), *extra, phrases=phrases)
    return build


def unsafe_global(m: Material):
    import argparse

    path = m.tmp / "global.pth"
    torch.save({"state_dict": m.state(), "args": argparse.Namespace(lr=1e-4)}, path)
    return convert(path, m.tmp / "out", "--config", m.config(), phrases=("refused", "global.pth"))


def truncated_central_directory(m: Material):
    path = m.copy(m.pixart_pth, "cut.pth")
    raw = path.read_bytes()
    path.write_bytes(raw[: raw.rindex(b"PK\x01\x02") + 20])  # cut inside the central directory
    return convert(path, m.tmp / "out", "--config", m.config(), phrases=("cut.pth",))


def user_folder(m: Material):
    out = m.tmp / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("four years of work")
    return convert(m.pixart_diffusers_dir, out, "--overwrite", phrases=("not a folder pixart-ms wrote",))


def regular_file(overwrite: bool):
    def build(m: Material):
        out = m.tmp / "notes.txt"
        out.write_text("mine")
        return convert(m.pixart_diffusers_dir, out, *(["--overwrite"] if overwrite else []),
                       phrases=("a file is in the way",))
    return build


def symlink_to_ours(m: Material):
    ours = m.converted_pixart["diffusers"]
    link = m.tmp / "link"
    link.symlink_to(ours, target_is_directory=True)
    case = convert(m.pixart_diffusers_dir, link, "--overwrite", phrases=("symlink",))
    case.sources.append(ours)
    return case


def dangling_symlink(m: Material):
    link = m.tmp / "link"
    link.symlink_to(m.tmp / "nowhere")
    return convert(m.pixart_diffusers_dir, link, phrases=("symlink",), absent=[m.tmp / "nowhere"])


def inside_source(m: Material):
    src = m.copy(m.pixart_diffusers_dir, "src")
    return convert(src, src / "ms", phrases=("inside the input",))


def equal_to_source(m: Material):
    src = m.copy(m.pixart_diffusers_dir, "src")
    return convert(src, src, "--overwrite", phrases=("inside the input",))


def containing_source(m: Material):
    ours = m.copy(m.converted_pixart["diffusers"], "ours")  # a folder of ours, holding the source
    src = m.copy(m.pixart_diffusers_dir, "ours/src")
    case = convert(src, ours, "--overwrite", phrases=("contains the input",))
    return case


def missing_parents_removed(m: Material):
    state = m.state()
    state["final_layer.linear.bias"][0] = float("nan")  # found while streaming, after the parents were made
    pth = m.pth("nan.pth", state)
    out = m.tmp / "a" / "b" / "out"
    return convert(pth, out, "--config", m.config(), absent=[m.tmp / "a"], phrases=("NaN",))


def non_utf8_name(m: Material):
    name = os.fsdecode(b"\xff\xfeweights.pth")
    src = m.tmp / name
    src.write_bytes(m.pixart_pth.read_bytes()[:5000])
    return convert(src, m.tmp / "out", "--config", m.config(), phrases=("\\xff\\xfeweights.pth",), subprocess=True)


def already_converted(kind: str):
    def build(m: Material):
        src = {"folder": lambda: m.converted_pixart["diffusers"],
               "file": lambda: m.converted_pixart["diffusers"] / WEIGHTS,
               "pipeline": lambda: m.tiny_pipeline[1],
               "export": lambda: m.export_dir}[kind]()
        return convert(src, m.tmp / "out", phrases=("already", "--to diffusers", "--to original"))
    return build


def vae_config_for_transformer(m: Material):
    vae_config = m.tiny_pipeline[0] / "vae" / "config.json"
    return convert(m.pixart_pth, m.tmp / "out", "--config", vae_config,
                   phrases=("describes an AutoencoderKL (vae), not a transformer",))


def config_not_json(m: Material):
    bad = m.tmp / "config.json"
    bad.write_text("{not json")
    return convert(m.pixart_pth, m.tmp / "out", "--config", bad, phrases=("not valid JSON",))


def sample_size(value: str, *extra):
    def build(m: Material):
        return convert(m.pixart_pth, m.tmp / "out", "--sample-size", value, *extra, phrases=("--sample-size",))
    return build


def readonly_parent(m: Material):
    parent = m.tmp / "ro"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount is the only true refusal
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)],
                          capture_output=True).returncode:
            pytest.skip("running as root and `mount -t tmpfs` is not permitted: no read-only folder to test with")
        m.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(parent)]))
    else:
        parent.chmod(0o555)
        m.request.addfinalizer(lambda: parent.chmod(0o755))
    return convert(m.pixart_diffusers_dir, parent / "sub" / "out", phrases=("not writable",))


def tmpfs(m: Material, options: str) -> Path:
    where = m.tmp / "small-disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                      capture_output=True).returncode:
        pytest.skip("`mount -t tmpfs` is not permitted here; the simulated disk-full rows cover this")
    m.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(where)]))
    return where


def disk_too_small(m: Material):
    disk = tmpfs(m, "size=64k")
    return convert(m.pixart_diffusers_dir, disk / "out", phrases=("needs", "free on"))


def disk_full_midway(m: Material):
    # bytes to spare but only 4 inodes: the root, the partial folder, the weights and config.json; manifest.json
    # finds the disk full after the weights were written
    disk = tmpfs(m, "size=16m,nr_inodes=4")
    return convert(m.pixart_diffusers_dir, disk / "out", phrases=("no space left",))


def simulated_enospc(m: Material):
    from converters.writers import SafetensorsWriter

    calls = []
    original = SafetensorsWriter._write

    def fill_up(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        original(self, *args)

    m.monkeypatch.setattr(SafetensorsWriter, "_write", fill_up)
    return convert(m.pixart_diffusers_dir, m.tmp / "out", phrases=("no space left",))


def simulated_small_disk(m: Material):
    import pixart_core.outputs as outputs

    m.monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096,
                                                                                                4096))
    return convert(m.pixart_diffusers_dir, m.tmp / "out", phrases=("needs", "only 4.0 KiB free"))


def verify_foreign(m: Material):
    folder = m.tmp / "foreign"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"hello": 1}')
    return Case(["verify", folder], sources=[folder], phrases=("foreign manifest.json",))


def verify_changed_export(m: Material):
    export = m.copy(m.export_dir, "export")
    cfg = next((export / "transformer").glob("*.cfg"))
    cfg.write_text(cfg.read_text() + "\n# edited\n")
    return Case(["verify", export], sources=[export], code=1, phrases=("verification failed",))


def export_truncated(m: Material):
    folder = m.copy(m.converted_pixart["diffusers"], "ms")
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:5000])
    return Case(["export", folder, "-o", m.tmp / "export"], target=m.tmp / "export", sources=[folder],
                phrases=(WEIGHTS, "the manifest says"))


def infer(*extra, image="fox.png", damage=None, phrases=()):
    def build(m: Material):
        export = m.copy(m.export_dir, "export") if damage else m.export_dir
        if damage:
            damage(export)
        return Case(["infer", export, "--prompt", "a fox", "-o", m.tmp / image, *extra], target=m.tmp / image,
                    sources=[export], phrases=phrases)
    return build


def truncate_graph(export: Path):
    graph = next((export / "transformer").glob("*.mindir"))
    graph.write_bytes(graph.read_bytes()[:1000])


def flip_graph_byte(export: Path):
    graph = next((export / "transformer").glob("*.mindir"))
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph.write_bytes(bytes(raw))


def parity(*extra, phrases=(), report=None):
    def build(m: Material):
        src, out, _ = m.tiny_pipeline
        target = None
        args = ["parity", src, out, *extra]
        if report == "file":
            target = m.tmp / "report.txt"
            target.write_text("an earlier report I want to keep")
            args += ["--report", target]
        elif report == "folder":
            target = m.tmp / "mine"
            target.mkdir()
            (target / "notes.md").write_text("mine")
            args += ["--report", target, "--overwrite"]
        return Case(args, target=target, sources=[src, out], phrases=phrases)
    return build


def demo_into_user_folder(m: Material):
    folder = m.tmp / "home"
    folder.mkdir()
    (folder / "sources").mkdir()
    (folder / "sources" / "thesis.txt").write_text("mine")
    return Case(["demo", folder], sources=[folder], phrases=("not made by `pixart-ms demo`",))


ROWS = {
    # found in issue 10
    "overwrite-user-folder": user_folder,
    "overwrite-regular-file": regular_file(True),
    "regular-file-at-target": regular_file(False),
    "overwrite-symlink-to-our-folder": symlink_to_ours,
    "verify-foreign-manifest": verify_foreign,
    "verify-export-with-changed-file": verify_changed_export,
    "export-truncated-weights": export_truncated,
    "infer-txt-extension": infer(image="out.txt", phrases=("unknown image type .txt",)),
    "infer-no-extension": infer(image="out", phrases=("no extension",)),
    "infer-truncated-mindir": infer(damage=truncate_graph, phrases=(".mindir", "the manifest says")),
    "infer-changed-mindir": infer(damage=flip_graph_byte, phrases=(".mindir", "sha256")),
    "infer-steps-0": infer("--steps", "0", phrases=("--steps",)),
    "infer-not-an-export": lambda m: Case(["infer", m.tiny_pipeline[1], "--prompt", "a", "-o", m.tmp / "a.png"],
                                          target=m.tmp / "a.png", phrases=("not an export folder",)),
    "parity-report-existing-file": parity(phrases=("a file is in the way",), report="file"),
    "parity-report-user-folder": parity(phrases=("not a folder pixart-ms wrote",), report="folder"),
    "disk-too-small-tmpfs": disk_too_small,
    "disk-full-midway-tmpfs": disk_full_midway,
    "disk-full-midway-simulated": simulated_enospc,
    "disk-too-small-simulated": simulated_small_disk,
    "parity-bucket-banana": parity("--bucket", "banana", phrases=("--bucket banana", "0.57")),
    "parity-tolerance-negative": parity("--tolerance", "-1", phrases=("--tolerance",)),
    "parity-tolerance-zero": parity("--tolerance", "0", phrases=("--tolerance",)),
    "parity-max-memory-garbage": parity("--max-memory", "lots", phrases=("--max-memory 'lots'", "60%")),
    "parity-max-memory-share-zero": parity("--max-memory", "0%", phrases=("--max-memory 0%",)),
    "parity-max-memory-below-estimate": parity("--max-memory", "100M", phrases=("needs about", "--max-memory 0.1 GiB")),
    "parity-whole-over-budget": parity("--whole", "--max-memory", "1GiB", phrases=("whole parity", "drop --whole")),
    "parity-height-without-width": parity("--height", "16", phrases=("--height",)),
    "parity-component-absent": lambda m: Case(["parity", m.pixart_diffusers_dir, m.converted_pixart["diffusers"],
                                                "--component", "vae_encoder"], phrases=("no vae_encoder",)),
    "convert-sample-size-77": sample_size("77"),
    "convert-sample-size-odd-with-config": lambda m: sample_size("33", "--config", m.config())(m),
    "convert-vae-config-for-transformer": vae_config_for_transformer,
    "convert-config-not-json": config_not_json,
    "convert-already-converted-folder": already_converted("folder"),
    "convert-already-converted-file": already_converted("file"),
    "convert-already-converted-pipeline": already_converted("pipeline"),
    "convert-export-folder": already_converted("export"),
    "convert-missing-parents-removed-on-failure": missing_parents_removed,
    "demo-into-user-folder": demo_into_user_folder,
    # safetensors headers
    "safetensors-length-beyond-file": length_beyond_file,
    "safetensors-invalid-json": header_row(lambda h, d: (json.dumps(h)[:-3], d), "not a readable safetensors"),
    "safetensors-unknown-dtype": header_row(lambda h, d: (json.dumps({**h, "proj_out.bias": {
        **h["proj_out.bias"], "dtype": "Q7"}}), d), "unsupported dtype Q7"),
    "safetensors-overlapping-offsets": header_row(overlapping, "overlap"),
    "safetensors-out-of-range-offsets": header_row(out_of_range, "outside the data"),
    "safetensors-zero-byte-tensor": header_row(zero_bytes, "proj_out.bias"),
    "safetensors-duplicate-name": header_row(duplicate_name, "duplicate entry 'proj_out.bias'"),
    # .pth zips
    "pth-truncated-central-directory": truncated_central_directory,
    "pth-missing-data-record": lambda m: convert(m.zip_without("nopkl.pth", "/data.pkl"), m.tmp / "out",
                                                 "--config", m.config(), phrases=("nopkl.pth",)),
    "pth-pickle-refers-to-missing-storage": lambda m: convert(m.zip_without("nostorage.pth", "/data/0"),
                                                              m.tmp / "out", "--config", m.config(),
                                                              phrases=("nostorage.pth",)),
    "pth-global-outside-allow-list": unsafe_global,
    # output locations
    "read-only-output-parent": readonly_parent,
    "output-inside-source": inside_source,
    "output-equal-to-source": equal_to_source,
    "output-containing-source": containing_source,
    "output-dangling-symlink": dangling_symlink,
    "non-utf8-file-name": non_utf8_name,
    # values
    "nan-in-source": with_values(lambda s: s["blocks.0.mlp.fc1.bias"].__setitem__(3, float("nan")),
                                 phrases=("blocks.0.mlp.fc1.bias: 1 NaN/Inf",)),
    "inf-in-source": with_values(lambda s: s["t_block.1.bias"].__setitem__(0, float("inf")),
                                 phrases=("t_block.1.bias: 1 NaN/Inf",)),
    "fp16-overflow-on-cast": with_values(lambda s: s["t_block.1.weight"].__setitem__((0, 0), 1e6), "--dtype", "fp16",
                                         phrases=("overflows fp16",)),
    # shards
    "shard-index-names-missing-shard": missing_shard,
    "tensor-in-two-shards": tensor_in_two_shards,
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input(row, request, tmp_path, monkeypatch):
    m = Material(request, tmp_path)
    m.__dict__["monkeypatch"] = monkeypatch
    check(ROWS[row](m))


# ----------------------------------------------------------------------------------------------------------------
# what the corpus cannot express as one failing run

def test_argument_errors_import_nothing_heavy(tmp_path):
    """Argument and path errors are answered before torch, MindSpore, diffusers or transformers is imported (what
    makes them answer in well under a second; the time itself is measured outside the test suite)."""
    probe = ("import sys\nfrom pixart_ms import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             f"    print(e.code, sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    cases = [["convert", "/nonexistent.pth", "-o", tmp_path / "x"],
             ["convert", tmp_path, "-o", tmp_path / "x", "--sample-size", "77"],
             ["verify", "/nonexistent"],
             ["parity", "/nonexistent", tmp_path],
             ["parity", tmp_path, tmp_path, "--tolerance", "-1"],
             ["export", "/nonexistent", "-o", tmp_path / "x"],
             ["infer", "/nonexistent", "--prompt", "a", "-o", tmp_path / "x.png"],
             ["infer", tmp_path, "--prompt", "a", "-o", tmp_path / "x.txt"]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOG_v": "3"}
    for args in cases:
        proc = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=60)
        assert proc.stdout.strip() == "2 []", (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


SLOW_WRITER = """
import sys, time
import converters.writers as writers
write = writers.SafetensorsWriter._write
def slow(self, *args):
    time.sleep(0.2)
    write(self, *args)
writers.SafetensorsWriter._write = slow
from pixart_ms import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_leaves_nothing(signum, code, tmp_path, pixart_diffusers_dir):
    out = tmp_path / "deep" / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOG_v": "3"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "convert", pixart_diffusers_dir, "-o", out, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.parent.is_dir() and any(out.parent.iterdir())):
        time.sleep(0.05)
    partial = list(out.parent.iterdir())
    assert partial and partial[0].name.startswith(".out.partial-"), partial
    time.sleep(0.3)  # inside the writer's loop
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (stdout, stderr)
    assert stderr.strip().splitlines() == [f"error: interrupted by {signal.Signals(signum).name}; nothing was kept"]
    assert not (tmp_path / "deep").exists()  # the partial folder and the parent the run created


def test_stale_partial_of_a_killed_run_is_removed(tmp_path, pixart_diffusers_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "half.safetensors").write_bytes(b"\0" * 3000)
    restored = tmp_path / f".other.old-{dead.pid}"  # killed between the two renames of a replacement
    restored.mkdir()
    (restored / "manifest.json").write_text("{}")
    alive = tmp_path / f".busy.partial-{os.getpid()}"  # a running process's work is left alone
    alive.mkdir()
    result = run_cli("convert", pixart_diffusers_dir, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"removed .out.partial-{dead.pid} (2.9 KiB)" in notes[0], result.stderr
    assert f"restored other from .other.old-{dead.pid}" in notes[0]
    assert not stale.exists() and (tmp_path / "other" / "manifest.json").is_file() and alive.is_dir()


def test_missing_parents_are_created(tmp_path, pixart_diffusers_dir):
    out = tmp_path / "ms" / "nested" / "transformer"
    result = run_cli("convert", pixart_diffusers_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / WEIGHTS).is_file() and run_cli("verify", out).exit_code == 0


def test_non_utf8_names_convert(tmp_path, pixart_pth, pixart_diffusers_dir):
    src = tmp_path / os.fsdecode(b"m\xe9lange.pth")
    shutil.copyfile(pixart_pth, src)
    out = tmp_path / os.fsdecode(b"sortie-\xe9")
    code, stdout, stderr = run_sub(["convert", src, "-o", out, "--config", pixart_diffusers_dir / "config.json"])
    assert code == 0, stderr
    assert "m\\xe9lange.pth" in stdout and (out / WEIGHTS).is_file()


def test_fp16_weights_pass_default_parity_and_export(tmp_path, pixart_diffusers_dir):
    """README: convert --dtype fp16, then the default parity and export: the stored dtype's tolerance applies."""
    out = tmp_path / "fp16"
    assert run_cli("convert", pixart_diffusers_dir, "-o", out, "--dtype", "fp16").exit_code == 0
    result = run_cli("parity", pixart_diffusers_dir, out, "--timesteps", "999", "--max-length", "16")
    assert result.exit_code == 0, result.output
    assert "note: " in result.stderr and "stores fp16 weights" in result.stderr and "0.005" in result.stderr
    result = run_cli("export", out, "-o", tmp_path / "export", "--max-length", "16")
    assert result.exit_code == 0, result.output
    assert "stores fp16 weights" in result.stderr


def test_t5_fp16_summary_names_the_fp32_tensors(tmp_path, tiny_pipeline):
    src, _, _ = tiny_pipeline
    result = run_cli("convert", src / "text_encoder", "-o", tmp_path / "t5", "--dtype", "fp16")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "tensors," in line)
    assert "dtype float16/float32" in line and "DenseReluDense.wo.weight [n=0..1] kept in fp32" in line


def test_bucket_is_honoured(tiny_pipeline):
    src, out, _ = tiny_pipeline
    result = run_cli("parity", src / "transformer", out / "transformer", "--bucket", "0.57", "--timesteps", "999",
                     "--max-length", "16", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["components"]["transformer"]["cases"] == ["48x80px t=999"]  # 6x10 latent: the 0.57 bucket


def test_one_line_folds_doubled_paths():
    from pixart_core.cli import one_line

    assert one_line("ms/transformer: ms/transformer: no vae_encoder here") == "ms/transformer: no vae_encoder here"
    assert one_line("a.pth: refused\n  GLOBAL x.y\n") == "a.pth: refused GLOBAL x.y"
