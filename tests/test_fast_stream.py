"""The conversion stream's checks cannot be dropped by speed work: NaN, Inf and fp16 overflow caught at a staging
buffer boundary, across one and inside one, for fp32, fp16 and bf16 sources; a flipped byte caught by the hashes
and by verify; the torch-free .pth reader's refusals and its fallback to torch.load; O_DIRECT refused at open or at
the first write; the .ckpt framing against MindSpore's serializer; conversions and verify without torch or
MindSpore imported."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from converters import checks, staging
from converters.engine import build_plan, stream_plan
from converters.keymaps.rules import Spec, Split, identity
from converters.sources import SafetensorsSource, read_safetensors_header
from converters.torch_source import TorchSource, Unsupported, restricted_index
from converters.writers import CkptWriter, SafetensorsWriter, ckpt_frame, hash_weights_file
from pixart_core.errors import DataError, SourceError

from .conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
BF16 = np.dtype(ml_dtypes.bfloat16)
NP = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16}
BUFFER = 4096  # the staging buffer in these tests: a few elements per buffer, many buffers per tensor


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch):
    monkeypatch.setattr(staging, "STAGE_BYTES", BUFFER)


def save_safetensors(path: Path, arrays: dict) -> Path:
    """A safetensors file in the given order, written by hand (numpy only)."""
    header, offset = {}, 0
    for name, a in arrays.items():
        code = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[a.dtype.name]
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(a.tobytes() for a in arrays.values()))
    return path


def convert_file(src: Path, out: Path, dtype: str = "keep", spec=None):
    """The engine's plan and stream, identity names, into a safetensors file; returns (plan, digests)."""
    source = SafetensorsSource([src])
    plan = build_plan(spec or Spec("test", "test", (identity(),)), source, None, dtype=dtype)
    plan.raise_if_problems()
    writer = SafetensorsWriter(out, [(t.name, t.dtype, t.shape) for t in plan.targets])
    try:
        digests = stream_plan(plan, source, writer)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return plan, digests, writer


def sources(dtype: str, n: int = 6000):
    """A short odd-length fp16 tensor first (so later elements straddle buffer boundaries), then ``w``."""
    rng = np.random.default_rng(0)
    return {"a.pad": rng.standard_normal(7).astype(np.float16),
            "b.w": (rng.standard_normal(n) * 100).astype(NP[dtype])}


def data_offset(tmp_path, dtype: str, policy: str) -> int:
    """File offset of ``b.w``'s data in the output, from a clean conversion."""
    src = save_safetensors(tmp_path / "clean.safetensors", sources(dtype))
    out = tmp_path / "clean-out.safetensors"
    convert_file(src, out, policy)
    header, start = read_safetensors_header(out)
    return start + header["b.w"]["data_offsets"][0]


def tensor_ranges(header: dict, start: int) -> list[tuple[int, int]]:
    """A safetensors file's tensor byte ranges, from its header."""
    return [(start + e["data_offsets"][0], start + e["data_offsets"][1]) for k, e in header.items()
            if k != "__metadata__"]


def record_range(data: bytes, info: zipfile.ZipInfo) -> tuple[int, int]:
    """The byte range of a stored zip record's data (after its local header's name and extra field)."""
    at = info.header_offset
    begin = at + 30 + int.from_bytes(data[at + 26:at + 28], "little") + int.from_bytes(data[at + 28:at + 30], "little")
    return begin, begin + info.file_size


def framing_sha256(data: bytes, ranges) -> str:
    """The sha256 of every byte of ``data`` outside ``ranges`` (the tensors), in file order."""
    digest, pos = hashlib.sha256(), 0
    for begin, end in sorted(ranges):
        digest.update(data[pos:begin])
        pos = end
    digest.update(data[pos:])
    return digest.hexdigest()


def header_letter(data: bytes) -> int:
    """The offset of a letter in a safetensors header's ``producer`` metadata: flipping its case keeps the JSON
    valid."""
    at = data.index(b'"producer":"') + len(b'"producer":"')
    return next(i for i in range(at, at + 64) if chr(data[i]).isalpha())


def positions(first: int, item: int, n: int) -> dict[str, int]:
    """Indices of the elements of ``b.w`` at the places that matter in the output file."""
    boundary = (first // BUFFER + 2) * BUFFER  # a staging-buffer boundary inside the tensor
    i, cut = divmod(boundary - first, item)
    out = {"last-of-a-buffer": i - 1, "inside-a-buffer": (boundary + BUFFER // 2 - first) // item, "last": n - 1}
    if cut:
        out.update({"straddling": i, "first-of-a-buffer": i + 1})
    else:
        out["first-of-a-buffer"] = i
    return out


BAD = {"nan": float("nan"), "inf": float("inf"), "overflow": 2.0 ** 20}  # exact in every dtype here
CASES = [(d, kind) for d in ("float32", "float16", "bfloat16") for kind in ("nan", "inf", "overflow")
         if not (d == "float16" and kind == "overflow")]  # an fp16 source cannot exceed the fp16 range


@pytest.mark.parametrize("dtype,kind", CASES)
def test_bad_value_caught_everywhere_in_the_buffers(tmp_path, dtype, kind):
    policy = "fp16" if kind == "overflow" else "keep"
    first = data_offset(tmp_path, dtype, policy)
    item = 2 if policy == "fp16" else np.dtype(NP[dtype]).itemsize
    places = positions(first, item, 6000)
    if item == 4:
        assert "straddling" in places  # the odd fp16 tensor before it puts fp32 elements across boundaries
    for where, index in places.items():
        arrays = sources(dtype)
        arrays["b.w"][index] = BAD[kind]
        src = save_safetensors(tmp_path / f"{where}.safetensors", arrays)
        with pytest.raises(DataError) as caught:
            convert_file(src, tmp_path / f"{where}-out.safetensors", policy)
        message = str(caught.value)
        if kind == "overflow":
            assert "b.w: |x| up to 1.049e+06 overflows fp16" in message, (where, message)
        else:
            assert "b.w: 1 NaN/Inf value(s)" in message, (where, message)
        assert "a.pad" not in message


def test_verify_reads_a_manifest_with_the_whole_file_hash(tmp_path, pixart_diffusers_dir):
    """Manifests written before the framing hash (format 1) record the whole file's sha256: verify still checks it."""
    out = tmp_path / "ms"
    assert run_cli("convert", pixart_diffusers_dir, "-o", out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    weights = out / manifest["weights_file"]
    original = weights.read_bytes()
    manifest["format_version"] = 1
    manifest["files"][weights.name] = {"size": len(original), "sha256": hashlib.sha256(original).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli("verify", out).exit_code == 0
    changed = bytearray(original)
    changed[header_letter(original)] ^= 0x20
    weights.write_bytes(bytes(changed))
    result = run_cli("verify", out)
    assert result.exit_code == 1 and "sha256 differs from the manifest" in result.stdout, result.output


@pytest.mark.parametrize("dtype,policy", [("float32", "keep"), ("float32", "fp16"), ("float32", "bf16"),
                                          ("bfloat16", "fp16"), ("bfloat16", "keep"), ("float16", "fp32")])
def test_clean_stream_bytes_and_hashes(tmp_path, dtype, policy):
    """Every byte and hash the stream writes equals numpy's own cast of the source (``astype``)."""
    arrays = sources(dtype)
    src = save_safetensors(tmp_path / "s.safetensors", arrays)
    out = tmp_path / "o.safetensors"
    plan, digests, writer = convert_file(src, out, policy)
    data = out.read_bytes()
    header, start = read_safetensors_header(out)
    for t in plan.targets:
        expected = arrays[t.name].astype(NP[t.dtype]).tobytes()
        begin, end = header[t.name]["data_offsets"]
        assert data[start + begin:start + end] == expected, t.name
        assert digests[t.name] == hashlib.sha256(expected).hexdigest()
    assert (writer.size, writer.framing_sha256) == (len(data), framing_sha256(data, tensor_ranges(header, start)))
    assert hash_weights_file(out) == ({"framing_sha256": writer.framing_sha256}, writer.size,
                                      [(t.name, t.dtype, t.shape, digests[t.name]) for t in plan.targets])
    assert hash_weights_file(out, whole_file=True)[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_axis0_split_streams_as_byte_ranges(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"qkv": rng.standard_normal((3 * 37, 5)).astype(np.float32)}
    src = save_safetensors(tmp_path / "s.safetensors", arrays)
    spec = Spec("t", "t", (Split("qkv", ("q", "k", "v")),))
    source = SafetensorsSource([src])
    plan = build_plan(spec, source, None)
    from converters.ranges import RangeReader

    assert all(RangeReader(source, checks.Findings()).producer(t) is not None for t in plan.targets)
    plan, digests, _ = convert_file(src, tmp_path / "o.safetensors", spec=spec)
    header, start = read_safetensors_header(tmp_path / "o.safetensors")
    data = (tmp_path / "o.safetensors").read_bytes()
    for name, part in zip("qkv", np.split(arrays["qkv"], 3)):
        begin, end = header[name]["data_offsets"]
        assert data[start + begin:start + end] == part.tobytes()


def test_flipped_byte_caught_by_hashes_and_verify(tmp_path, pixart_diffusers_dir):
    out = tmp_path / "ms"
    assert run_cli("convert", pixart_diffusers_dir, "-o", out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    weights = out / manifest["weights_file"]
    header, start = read_safetensors_header(weights)
    original = weights.read_bytes()
    boundary = (start // BUFFER + 1) * BUFFER
    for offset in (boundary - 1, boundary, boundary + 1000, len(original) - 1):  # around and inside a buffer
        changed = bytearray(original)
        changed[offset] ^= 0x01
        weights.write_bytes(bytes(changed))
        name = next(k for k, e in header.items() if k != "__metadata__"
                    and start + e["data_offsets"][0] <= offset < start + e["data_offsets"][1])
        result = run_cli("verify", out)
        assert result.exit_code == 1, (offset, result.output)
        assert f"tensor {name} differs from the manifest" in result.stdout
        assert "outside its tensors" not in result.stdout  # the header was not touched
    # a byte outside every tensor that leaves a valid header: a letter of the producer's name in its metadata
    changed = bytearray(original)
    changed[header_letter(original)] ^= 0x20
    weights.write_bytes(bytes(changed))
    result = run_cli("verify", out)
    assert result.exit_code == 1, result.output
    assert "bytes outside its tensors (headers, framing) differ from the manifest" in result.stdout
    assert "differs from the manifest" not in result.stdout  # no tensor row: every tensor's bytes are intact
    weights.write_bytes(original)
    assert run_cli("verify", out).exit_code == 0
    # a flipped source byte: the source's sha256 in the manifest and that tensor's hash both change
    src = tmp_path / "src"
    import shutil

    shutil.copytree(pixart_diffusers_dir, src)
    source_file = next(src.glob("*.safetensors"))
    sheader, sstart = read_safetensors_header(source_file)
    entry = sheader["proj_out.weight"]
    raw = bytearray(source_file.read_bytes())
    raw[sstart + entry["data_offsets"][0] + 5] ^= 0x01
    source_file.write_bytes(bytes(raw))
    assert run_cli("convert", src, "-o", tmp_path / "ms2").exit_code == 0
    changed = json.loads((tmp_path / "ms2" / "manifest.json").read_text())
    assert changed["source"]["files"][0]["sha256"] != manifest["source"]["files"][0]["sha256"]
    assert changed["source"]["files"][0]["sha256"] == hashlib.sha256(bytes(raw)).hexdigest()
    differ = [a["name"] for a, b in zip(manifest["tensors"], changed["tensors"]) if a["sha256"] != b["sha256"]]
    assert differ == ["proj_out.weight"]


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_backward_streams_byte_ranges_and_catches_nan(tmp_path, pixart_diffusers_dir, monkeypatch, fmt):
    """``convert --to diffusers`` from our MindSpore output (safetensors or .ckpt): renamed tensors stream as byte
    ranges of the MindSpore file through the same staged writer, bit-exact; a NaN inside a tensor is still caught."""
    from converters import engine
    from converters.ckpt_source import scan_ckpt

    tensor = "transformer_blocks.0.ff.net.2.weight"
    ms_out = tmp_path / "ms"
    assert run_cli("convert", pixart_diffusers_dir, "-o", ms_out, "--format", fmt).exit_code == 0
    produced = []
    real = engine.produce_group
    monkeypatch.setattr(engine, "produce_group", lambda group, *a: produced.append(group) or real(group, *a))
    back = tmp_path / "back"
    assert run_cli("convert", ms_out, "-o", back, "--to", "diffusers").exit_code == 0
    header, start = read_safetensors_header(next(back.glob("*.safetensors")))
    assert len(produced) < (len(header) - 1) // 4, len(produced)  # most targets never held whole in memory
    source = SafetensorsSource([next(pixart_diffusers_dir.glob("*.safetensors"))])
    written = SafetensorsSource([next(back.glob("*.safetensors"))])
    for key in source.infos:
        assert written.read(key).tobytes() == source.read(key).tobytes(), key
    weights = next(ms_out.glob(f"*.{fmt}"))
    if fmt == "safetensors":
        header, start = read_safetensors_header(weights)
        offset = start + header[tensor]["data_offsets"][0]
    else:
        offset = scan_ckpt(weights)[1][tensor][0][0]
    raw = bytearray(weights.read_bytes())
    raw[offset + 4 * 7:offset + 4 * 8] = np.array([np.nan], np.float32).tobytes()
    weights.write_bytes(bytes(raw))
    result = run_cli("convert", ms_out, "-o", tmp_path / "bad", "--to", "diffusers")
    assert result.exit_code == 2 and f"{tensor}: 1 NaN/Inf" in result.stderr, result.output
    assert not (tmp_path / "bad").exists()


# --- the torch-free .pth reader ---------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def test_restricted_reader_matches_torch(tmp_path):
    lin = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6))
    sd = lin.state_dict()  # an OrderedDict with _metadata
    big = torch.randn(10, 4)
    sd.update({"half": torch.randn(5, 3).half(), "bf": torch.randn(4, 4).bfloat16(), "rows": big[2:5], "big": big,
               "scalar": torch.tensor(3.0), "param": torch.nn.Parameter(torch.randn(2, 3)), "ints": torch.arange(5)})
    path = tmp_path / "m.pth"
    torch.save({"state_dict": sd}, path)
    infos = restricted_index(path)
    data = path.read_bytes()
    for key, t in sd.items():
        info = infos[key]
        ref = (t.detach().view(torch.int16) if t.dtype == torch.bfloat16 else t.detach()).contiguous().numpy()
        assert data[info.offset:info.offset + info.nbytes] == ref.tobytes() and info.shape == tuple(t.shape), key
    source = TorchSource([path])
    assert not source.notes and source.spans("big") == [(path, infos["big"].offset, 160)]
    assert np.array_equal(source.read("rows"), sd["rows"].numpy())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pixart-ms-pwned",))


def test_restricted_reader_refuses_a_foreign_global_and_torch_refuses_it_too(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"state_dict": {"x": _Evil()}}, protocol=2))
        z.writestr("evil/byteorder", "little")
        z.writestr("evil/version", "3\n")
    with pytest.raises(Unsupported, match="posix.system|os.system"):
        restricted_index(path)
    with pytest.raises(SourceError, match="refused"):
        TorchSource([path])
    assert not os.path.exists("/tmp/pixart-ms-pwned")


@pytest.mark.parametrize("extra", ["dtype-global", "strided-view"])
def test_fallback_to_torch_load(tmp_path, extra):
    """What the restricted reader cannot express (a harmless global it does not know, a strided view) is read
    by torch.load(weights_only=True), with a note, and converts to the same bytes."""
    rng = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(6, 4, generator=rng), "b": torch.randn(4, generator=rng)}
    obj = {"state_dict": dict(sd)}
    if extra == "dtype-global":
        obj["dtype"] = torch.float16
    else:
        obj["state_dict"]["w"] = torch.randn(4, 6, generator=rng).t()
    path = tmp_path / "m.pth"
    torch.save(obj, path)
    with pytest.raises(Unsupported):
        restricted_index(path)
    source = TorchSource([path])
    assert len(source.notes) == 1 and "torch.load" in source.notes[0]
    assert source.spans("w") is None
    plan = build_plan(Spec("t", "t", (identity(),)), source, None)
    writer = SafetensorsWriter(tmp_path / "o.safetensors", [(t.name, t.dtype, t.shape) for t in plan.targets])
    stream_plan(plan, source, writer)
    writer.close()
    header, start = read_safetensors_header(tmp_path / "o.safetensors")
    data = (tmp_path / "o.safetensors").read_bytes()
    for name in ("w", "b"):
        begin, end = header[name]["data_offsets"]
        assert data[start + begin:start + end] == obj["state_dict"][name].contiguous().numpy().tobytes()


# --- O_DIRECT refused -------------------------------------------------------------------------------------------

def _refuse_direct_open(monkeypatch):
    real = os.open

    def fake(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(staging.os, "open", fake)


def _refuse_direct_write(monkeypatch):
    import fcntl

    real = os.writev
    refused = []

    def fake(fd, buffers):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers)

    monkeypatch.setattr(staging.os, "writev", fake)
    return refused


@pytest.mark.parametrize("refuse", ["open", "write"])
def test_o_direct_refusal_falls_back(tmp_path, monkeypatch, refuse):
    arrays = sources("float32", 5000)
    src = save_safetensors(tmp_path / "s.safetensors", arrays)
    _, digests, clean = convert_file(src, tmp_path / "direct.safetensors")
    refused = _refuse_direct_open(monkeypatch) if refuse == "open" else _refuse_direct_write(monkeypatch)
    _, digests2, writer = convert_file(src, tmp_path / "buffered.safetensors")
    assert not writer._file.direct
    if refuse == "write":
        assert refused  # O_DIRECT was taken at open and refused at the first write
    assert (tmp_path / "buffered.safetensors").read_bytes() == (tmp_path / "direct.safetensors").read_bytes()
    assert digests2 == digests and writer.framing_sha256 == clean.framing_sha256


# --- formats and imports ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,length", [((), 4), ((0,), 0), ((3, 100), 1200), ((200, 300), 240000),
                                          ((7,), 14)])
def test_ckpt_framing_is_mindspores_serializer(shape, length):
    from mindspore.train.checkpoint_pb2 import Checkpoint

    content = bytes(range(256)) * (length // 256) + bytes(length % 256)
    msg = Checkpoint()
    value = msg.value.add()
    value.tag = "blocks.3.attn.to_q.weight"
    value.tensor.dims.extend(list(shape) or [0])
    value.tensor.tensor_type = "Float32"
    value.tensor.tensor_content = content
    assert ckpt_frame("blocks.3.attn.to_q.weight", "float32", shape, length) + content == msg.SerializeToString()


def test_ckpt_writer_elements_split_by_chunks(tmp_path, monkeypatch):
    """A chunk size that cuts elements (and buffers that cut frames) still gives MindSpore's bytes."""
    import converters.writers as writers
    from converters.ckpt_source import CkptSource

    monkeypatch.setattr(writers, "CKPT_CHUNK", 1001)
    arrays = {"a": np.arange(3000, dtype=np.float32), "b": np.ones((3, 5), np.float16)}
    w = CkptWriter(tmp_path / "x.ckpt", [(k, v.dtype.name, v.shape) for k, v in arrays.items()])
    for k, v in arrays.items():
        w.write(k, v)
    digests = w.digests()
    w.close()
    source = CkptSource(tmp_path / "x.ckpt")
    for k, v in arrays.items():
        assert np.array_equal(source.read(k), v) and digests[k] == hashlib.sha256(v.tobytes()).hexdigest()
    # the framing: every frame rebuilt from its content length (a frame ends where its content starts)
    data, frames, offset = (tmp_path / "x.ckpt").read_bytes(), [], 0
    for k, v in arrays.items():
        for start in range(0, v.nbytes, 1001):
            frame = ckpt_frame(k, v.dtype.name, v.shape, min(1001, v.nbytes - start))
            assert data[offset:offset + len(frame)] == frame
            frames.append(frame)
            offset += len(frame) + min(1001, v.nbytes - start)
    assert offset == len(data) and w.framing_sha256 == hashlib.sha256(b"".join(frames)).hexdigest()
    assert hash_weights_file(tmp_path / "x.ckpt")[0] == {"framing_sha256": w.framing_sha256}


@pytest.mark.parametrize("zip64", [False, True])
def test_pth_writer_staged_across_buffers(tmp_path, monkeypatch, zip64):
    """The .pth writer goes through the same staged stream: records and descriptors cut by buffer boundaries,
    CRC-32 from the tensor-hash thread (zipfile checks every record), zip64 fields where sizes/offsets need them,
    and the file hash computed while writing equals the file's."""
    import torch

    from converters import pth_writer

    if zip64:
        monkeypatch.setattr(pth_writer, "ZIP64_LIMIT", 5000)
    rng = np.random.default_rng(1)
    arrays = {"a": rng.standard_normal(3001).astype(np.float32), "b": np.zeros((0, 2), np.float16),
              "c": rng.standard_normal((33, 17)).astype(np.float16), "d": np.array(3, np.int64)}
    w = pth_writer.PthWriter(tmp_path / "x.pth", [(k, v.dtype.name, v.shape) for k, v in arrays.items()])
    for k, v in arrays.items():
        w.write(k, v)
    digests = w.digests()
    w.close()
    data = (tmp_path / "x.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "x.pth") as z:
        assert z.testzip() is None
        records = [record_range(data, i) for i in z.infolist() if i.filename.startswith("archive/data/")]
    assert (w.size, w.framing_sha256) == (len(data), framing_sha256(data, records))
    with zipfile.ZipFile(tmp_path / "x.pth") as z:
        assert max(i.file_size for i in z.infolist()) > 5000 and max(i.header_offset for i in z.infolist()) > 5000
    loaded = torch.load(tmp_path / "x.pth", weights_only=True)["state_dict"]
    for k, v in arrays.items():
        assert loaded[k].numpy().tobytes() == v.tobytes() and digests[k] == hashlib.sha256(v.tobytes()).hexdigest()
    hashes, _, rows = hash_weights_file(tmp_path / "x.pth")
    assert [r[3] for r in rows] == [digests[k] for k in arrays] and hashes["framing_sha256"] == w.framing_sha256


def test_bit_pattern_checks_exhaustive():
    """scan and the bf16 -> fp16 range check on every 16-bit pattern, in a block and alone."""
    bits = np.arange(65536, dtype=np.uint16)
    for dtype in ("bfloat16", "float16"):
        values = bits.view(NP[dtype]).astype(np.float32)
        finite = np.isfinite(values)
        assert checks.count_nonfinite(bits.view(np.uint8), dtype) == int((~finite).sum())
        for b in bits[::1]:
            one = np.full(4, 0x3C00 if dtype == "float16" else 0x3F80, np.uint16)
            one[2] = b
            assert checks.scan(one.view(np.uint8), dtype)[0] == (not finite[b]), (dtype, hex(b))
    values = bits.view(BF16).astype(np.float32)
    for b in bits:
        one = np.zeros(4, np.uint16)
        one[1] = b
        beyond = checks.fp16_peak(one.view(np.uint8), "bfloat16", None, None) is not None
        assert beyond == (not np.isnan(values[b]) and abs(values[b]) > 65504), hex(b)


def test_no_torch_or_mindspore_for_safetensors_and_pth(tmp_path, pixart_diffusers_dir, pixart_pth):
    probe = ("import sys\nfrom pixart_ms import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print(e.code, sorted(m for m in ('torch', 'mindspore') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOG_v": "3"}
    runs = [["convert", pixart_diffusers_dir, "-o", tmp_path / "a"],
            ["convert", pixart_pth, "-o", tmp_path / "b", "--config", pixart_diffusers_dir / "config.json"],
            ["verify", tmp_path / "b"],
            ["convert", pixart_diffusers_dir, "-o", tmp_path / "c", "--format", "ckpt", "--dtype", "fp16"],
            ["verify", tmp_path / "c"]]
    for args in runs:
        proc = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=300)
        assert proc.stdout.strip().splitlines()[-1] == "0 []", (args, proc.stdout, proc.stderr)
