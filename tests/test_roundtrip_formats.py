"""The file formats of the round trip, each against its framework's own reader or writer: our lazy MindSpore
``.ckpt`` reader against ``mindspore.load_checkpoint`` (chunked tensors, bf16, scalars, append_dict entries, the
CRC trailer, damaged files), our streaming ``.pth`` writer against ``torch.save`` / ``torch.load`` (weights only,
memory-mapped, zip64), and the safetensors metadata MindSpore and mindone accept."""
from __future__ import annotations

import zipfile

import ml_dtypes
import mindspore as ms
import numpy as np
import pytest
import torch

from converters import ckpt_source, pth_writer, writers
from converters.ckpt_source import CkptSource
from converters.detect import open_weights
from converters.pth_writer import PthWriter, hash_pth
from converters.sources import TorchSource, read_safetensors_header
from pixart_core import dtypes
from pixart_core.errors import SourceError

BF16 = np.dtype(ml_dtypes.bfloat16)


def sample_params(rng):
    return {
        "blocks.0.attn.qkv.weight": rng.standard_normal((48, 16)).astype(np.float32),
        "blocks.0.mlp.fc1.bias": rng.standard_normal(64).astype(np.float16),
        "shared.weight": rng.standard_normal((64, 24)).astype(np.float32),
        "scale": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "steps": np.array([3, 4], np.int64),
    }


def save_ms(path, arrays: dict, bf16=(), **kw):
    params = []
    for name, value in arrays.items():
        tensor = ms.Tensor(value)
        if name in bf16:
            tensor = tensor.astype(ms.bfloat16)
        params.append(ms.Parameter(tensor, name=name))
    ms.save_checkpoint(params, str(path), **kw)
    return path


def assert_same_as_mindspore(path):
    ours = CkptSource(path)
    theirs = ms.load_checkpoint(str(path))
    tensors = {k: v for k, v in theirs.items() if not isinstance(v, str)}
    assert set(ours.infos) == set(theirs)  # MindSpore writes no value at all for an empty tensor
    for name, value in tensors.items():
        array = ours.read(name)
        assert array.shape == tuple(value.shape), name
        assert dtypes.name_of_numpy(array.dtype) == dtypes.name_of_ms(value.dtype), name
        expected = value.astype(ms.float32).asnumpy().astype(BF16) if value.dtype == ms.bfloat16 else value.asnumpy()
        assert array.tobytes() == np.ascontiguousarray(expected).tobytes(), name
    ours.close()
    return ours, theirs


def test_field_numbers_are_mindspores():
    from mindspore.train import checkpoint_pb2 as pb

    fields = lambda d: {f.name: f.number for f in d.fields}  # noqa: E731
    assert fields(pb.Checkpoint.DESCRIPTOR) == {"value": ckpt_source.CHECKPOINT_VALUE}
    assert fields(pb.Checkpoint.DESCRIPTOR.nested_types_by_name["Value"]) == {
        "tag": ckpt_source.VALUE_TAG, "tensor": ckpt_source.VALUE_TENSOR, "maptensor": ckpt_source.VALUE_MAPTENSOR}
    assert fields(pb.TensorProto.DESCRIPTOR) == {
        "dims": ckpt_source.TENSOR_DIMS, "tensor_type": ckpt_source.TENSOR_TYPE,
        "tensor_content": ckpt_source.TENSOR_CONTENT}


def test_ckpt_reader_equals_load_checkpoint(tmp_path):
    arrays = sample_params(np.random.default_rng(0))
    path = save_ms(tmp_path / "a.ckpt", arrays, bf16=("shared.weight",),
                   append_dict={"epoch_num": 3, "loss_scale": 1024.0, "note": "text"})
    ours, theirs = assert_same_as_mindspore(path)
    assert ours.infos["shared.weight"].dtype == "bfloat16"
    assert ours.infos["scale"].shape == () and ours.infos["epoch_num"].dtype == "int64"
    assert ours.infos["note"].dtype == "uint8"  # a string entry, listed as bytes for a named rule to drop
    assert ours.kind == "mindspore"
    # rows of a tensor, as the tied-copy check reads them
    assert np.array_equal(ours.read_rows("blocks.0.attn.qkv.weight", 5, 9), arrays["blocks.0.attn.qkv.weight"][5:9])
    crc = save_ms(tmp_path / "crc.ckpt", arrays, crc_check=True)
    assert set(assert_same_as_mindspore(crc)[0].infos) == set(arrays) - {"empty"}


def test_chunked_tensors_read_across_chunks(tmp_path, monkeypatch):
    """A tensor over MindSpore's chunk size (512 MiB; lowered to 1 KiB here) is several values with one tag."""
    from mindspore.train import serialization

    rng = np.random.default_rng(1)
    arrays = {"big": rng.standard_normal((100, 37)).astype(np.float32),
              "big16": rng.standard_normal((70, 33)).astype(np.float32), "small": np.ones(3, np.float32)}
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)
    path = save_ms(tmp_path / "chunked.ckpt", arrays, bf16=("big16",))
    monkeypatch.undo()
    ours, _ = assert_same_as_mindspore(path)
    assert len(ours._chunks["big"]) > 10 and len(ours._chunks["big16"]) > 3
    assert np.array_equal(ours.read_rows("big", 3, 97), arrays["big"][3:97])  # spans many chunks
    # our own writer chunks the same way, and MindSpore reads it back
    monkeypatch.setattr(writers, "CKPT_CHUNK", 1000)
    entries = [(k, "float32", v.shape) for k, v in arrays.items() if k != "big16"]
    w = writers.CkptWriter(tmp_path / "ours.ckpt", entries)
    for name, *_ in entries:
        w.write(name, arrays[name])
    w.close()
    ours, _ = assert_same_as_mindspore(tmp_path / "ours.ckpt")
    assert len(ours._chunks["big"]) == -(-100 * 37 * 4 // 1000)


def test_damaged_ckpt_is_a_source_error(tmp_path):
    path = save_ms(tmp_path / "a.ckpt", sample_params(np.random.default_rng(2)))
    data = path.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="not a readable MindSpore checkpoint"):
        CkptSource(cut)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(SourceError, match="junk.ckpt"):
        open_weights(junk)


def test_ckpt_suffix_is_sniffed(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "torch.ckpt")
    assert isinstance(open_weights(tmp_path / "torch.ckpt"), TorchSource)
    save_ms(tmp_path / "ms.ckpt", {"w": np.ones(2, np.float32)})
    assert isinstance(open_weights(tmp_path / "ms.ckpt"), CkptSource)


def write_pth(path, arrays):
    entries = [(k, dtypes.name_of_numpy(v.dtype), v.shape) for k, v in arrays.items()]
    w = PthWriter(path, entries)
    for name, value in arrays.items():
        w.write(name, value)
    w.close()
    return w


def pth_arrays():
    rng = np.random.default_rng(3)
    return {"a.weight": rng.standard_normal((5, 7)).astype(np.float32),
            "b.bias": rng.standard_normal(9).astype(np.float32).astype(BF16),
            "c": np.array(4, np.int64), "d": np.zeros((0, 2), np.float16), "e": np.ones((2, 2, 3), np.float16)}


def test_pth_writer_is_what_torch_save_writes(tmp_path):
    arrays = pth_arrays()
    w = write_pth(tmp_path / "ours.pth", arrays)
    tensors = {}
    for name, value in arrays.items():  # fresh tensors: from_numpy keeps numpy's strides of an empty array
        source = torch.from_numpy(value.view(np.int16)).view(torch.bfloat16) if value.dtype == BF16 else \
            torch.from_numpy(value)
        tensors[name] = torch.empty(source.shape, dtype=source.dtype).copy_(source)
    torch.save({"state_dict": tensors}, tmp_path / "torch.pth")
    with zipfile.ZipFile(tmp_path / "ours.pth") as a, zipfile.ZipFile(tmp_path / "torch.pth") as b:
        assert a.read("archive/data.pkl") == b.read("torch/data.pkl").replace(b"torch/", b"archive/")
        for i in range(len(arrays)):
            assert a.read(f"archive/data/{i}") == b.read(f"torch/data/{i}")
    data = (tmp_path / "ours.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "ours.pth") as z:
        for info in z.infolist():  # every record's data 64-byte aligned, as torch writes them
            start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28],
                                                             "little") + \
                int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
            assert start % 64 == 0, info.filename
    loaded = torch.load(tmp_path / "ours.pth", weights_only=True, mmap=True)["state_dict"]
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    file_sha, size, rows = hash_pth(tmp_path / "ours.pth")  # through torch: the whole file's sha256
    assert (file_sha, size) == (pth_writer.hashlib.sha256(data).hexdigest(), len(data)) and w.size == len(data)
    assert [r[0] for r in rows] == list(arrays)


def test_pth_writer_zip64(tmp_path, monkeypatch):
    """Records and archives over 4 GiB need zip64 fields, which shift the data: the alignment accounts for them
    (exercised with zipfile's limit lowered)."""
    monkeypatch.setattr(pth_writer, "ZIP64_LIMIT", 64)
    arrays = pth_arrays()
    write_pth(tmp_path / "z64.pth", arrays)
    monkeypatch.undo()
    loaded = torch.load(tmp_path / "z64.pth", weights_only=True, mmap=True)["state_dict"]
    assert np.array_equal(loaded["a.weight"].numpy(), arrays["a.weight"])
    assert loaded["b.bias"].view(torch.int16).numpy().tobytes() == arrays["b.bias"].tobytes()


def test_mindspore_safetensors_metadata(tiny_pipeline):
    """Our MindSpore safetensors say format "np" (mindone's loaders and MindSpore's accept it) and name us."""
    _, out, _ = tiny_pipeline
    for name in ("transformer", "text_encoder", "vae"):
        weights = next((out / name).glob("*.safetensors"))
        header, _ = read_safetensors_header(weights)
        assert header["__metadata__"] == {"format": "np", "producer": "pixart-mindspore"}
        loaded = ms.load_checkpoint(str(weights), format="safetensors")
        assert len(loaded) == len(header) - 1
