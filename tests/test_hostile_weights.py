"""Hostile or broken weights: every malformed input is one clear SurgeryError, never a hang or a traceback."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from surgery.architectures.integrity import (
    check_config_agrees,
    check_layers_consistent,
    expected_outputs,
    format_layers,
    verify_written,
)
from surgery.errors import SurgeryError
from surgery.io import safetensors_stream
from surgery.io.safetensors_stream import (
    OutputTensor,
    TensorRecord,
    index_checkpoint,
    read_header,
    read_index,
    read_tensor,
    write_checkpoint_weights,
)


def write_raw(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors-shaped file: 8-byte little-endian length, header (JSON unless bytes), data."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid_file(path: Path) -> Path:
    """Two F32 tensors: ``a`` [2, 2] (16 bytes) then ``b`` [3] (12 bytes)."""
    header = {"__metadata__": {"format": "pt"}, "a": entry("F32", [2, 2], 0, 16), "b": entry("F32", [3], 16, 28)}
    return write_raw(path, header, struct.pack("<7f", *range(7)))


def rejects(path: Path, fragment: str) -> None:
    with pytest.raises(SurgeryError, match=fragment) as info:
        read_header(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- headers -------------------------------------------------------------------------------------------------


def test_valid_file_indexes_and_reads(tmp_path):
    records = index_checkpoint([valid_file(tmp_path / "m.safetensors")])
    assert records["b"].shape == (3,) and records["b"].nbytes == 12
    assert read_tensor(records["b"]).tolist() == [4.0, 5.0, 6.0]


def test_truncated_data_section(tmp_path):
    path = valid_file(tmp_path / "m.safetensors")
    os.truncate(path, path.stat().st_size - 5)
    rejects(path, r"tensor b ends at data byte 28 but the data section has only 23 bytes \(truncated file\?\)")


def test_offsets_past_end(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 64, 72)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(16)), "tensor b ends at data byte 72 but the data")


def test_four_terabyte_tensor_claim(tmp_path):
    header = {"huge": entry("F32", [1 << 40], 0, 4 << 40)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(64)), "tensor huge ends at data byte 4398046511104")


def test_header_length_larger_than_file(tmp_path):
    rejects(write_raw(tmp_path / "m.safetensors", {}, length=5000), r"header length 5000 exceeds 2")


def test_header_length_over_limit(tmp_path):
    rejects(write_raw(tmp_path / "m.safetensors", {}, length=1 << 62), "header length 4611686018427387904")


def test_file_shorter_than_length_field(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x01\x02")
    rejects(path, r"too short: 2 bytes")


def test_header_not_json(tmp_path):
    rejects(write_raw(tmp_path / "m.safetensors", b"{not json"), "bad header")


def test_header_nested_too_deeply(tmp_path):
    rejects(write_raw(tmp_path / "m.safetensors", b"[" * 100_000 + b"]" * 100_000), "nested too deeply")


def test_header_is_a_list(tmp_path):
    rejects(write_raw(tmp_path / "m.safetensors", [1, 2, 3]), "header is a JSON list, not an object")


def test_duplicate_tensor_name_in_header(tmp_path):
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    rejects(write_raw(tmp_path / "m.safetensors", raw, bytes(8)), "duplicate key a")


def test_entry_not_an_object(tmp_path):
    rejects(write_raw(tmp_path / "m.safetensors", {"a": [0, 4]}), "entry for tensor a is not an object")


def test_entry_lacking_data_offsets(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1]}}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(4)), "tensor a lacks 'data_offsets'")


def test_negative_offset(tmp_path):
    header = {"a": entry("F32", [1], -4, 0)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(4)), r"invalid data_offsets \[-4, 0\]")


def test_begin_after_end(tmp_path):
    header = {"a": entry("F32", [0], 8, 4)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(8)), r"need 0 <= begin <= end")


def test_offsets_not_two_ints(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(4)), "invalid data_offsets")


def test_length_disagrees_with_shape(tmp_path):
    header = {"a": entry("F32", [2, 2], 0, 12)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(16)), r"spans 12 bytes but its shape \[2, 2\] of F32")


def test_unknown_dtype(tmp_path):
    header = {"a": entry("Q7", [4], 0, 4)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(4)), "unsupported dtype Q7")


@pytest.mark.parametrize("shape", [[-1, 4], [2.0], [True], "4", None])
def test_invalid_shape(tmp_path, shape):
    header = {"a": {"dtype": "U8", "shape": shape, "data_offsets": [0, 4]}}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(4)), "has invalid shape")


def test_overlapping_offsets(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(12)), r"tensors a and b overlap \(byte 4 < 8\)")


@pytest.mark.parametrize("metadata", [["format", "pt"], {"format": 1}])
def test_bad_metadata(tmp_path, metadata):
    header = {"__metadata__": metadata, "a": entry("U8", [1], 0, 1)}
    rejects(write_raw(tmp_path / "m.safetensors", header, bytes(1)), "__metadata__ is not an object of strings")


def test_tensor_in_two_shards(tmp_path):
    first = valid_file(tmp_path / "one.safetensors")
    second = valid_file(tmp_path / "two.safetensors")
    with pytest.raises(SurgeryError, match="tensor a appears in both .*one.safetensors and .*two.safetensors"):
        index_checkpoint([first, second])


# --- index ---------------------------------------------------------------------------------------------------


def write_index(directory: Path, data: object) -> None:
    (directory / "model.safetensors.index.json").write_text(json.dumps(data))


def test_valid_index(tmp_path):
    valid_file(tmp_path / "s1.safetensors")
    valid_file(tmp_path / "s2.safetensors")
    write_index(tmp_path, {"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}})
    assert read_index(tmp_path) == [tmp_path / "s2.safetensors", tmp_path / "s1.safetensors"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"metadata": {}}, "no 'weight_map' object"),
        ({"weight_map": ["a", "b"]}, "no 'weight_map' object"),
        ({"weight_map": {}}, "'weight_map' is empty"),
        ([{"weight_map": {}}], "a JSON list, not an object"),
        ({"weight_map": {"a": 3}}, "shard of tensor a is not a string"),
    ],
)
def test_malformed_index(tmp_path, data, fragment):
    write_index(tmp_path, data)
    with pytest.raises(SurgeryError, match=fragment):
        read_index(tmp_path)


def test_index_not_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{")
    with pytest.raises(SurgeryError, match="malformed .*model.safetensors.index.json"):
        read_index(tmp_path)


def test_index_names_missing_shard(tmp_path):
    valid_file(tmp_path / "s1.safetensors")
    write_index(tmp_path, {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})
    with pytest.raises(SurgeryError, match="names shard s2.safetensors, which does not exist"):
        read_index(tmp_path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors", "/etc/passwd", ""])
def test_index_path_traversal(tmp_path, shard):
    model = tmp_path / "model"
    model.mkdir()
    valid_file(tmp_path / "outside.safetensors")
    write_index(model, {"weight_map": {"a": shard}})
    with pytest.raises(SurgeryError, match="which is not a file name inside"):
        read_index(model)


def test_index_names_a_directory(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    write_index(tmp_path, {"weight_map": {"a": "dir.safetensors"}})
    with pytest.raises(SurgeryError, match="which does not exist"):
        read_index(tmp_path)


# --- reading tensor bytes that are not there -----------------------------------------------------------------


def short_record(tmp_path: Path) -> TensorRecord:
    """A record claiming 1 MiB from a 64-byte file, as if the file shrank after its header was read."""
    path = tmp_path / "short.safetensors"
    path.write_bytes(bytes(64))
    return TensorRecord("w", path, "F32", (1 << 18,), 16, 1 << 20)


def test_copy_bytes_truncated_source(tmp_path):
    with open(tmp_path / "out.bin", "wb") as out, pytest.raises(SurgeryError, match="truncated: tensor w needs"):
        safetensors_stream._copy_bytes(short_record(tmp_path), out)


def test_copy_bytes_truncated_source_buffered_fallback(tmp_path, monkeypatch):
    def unsupported(*args: object) -> int:
        raise OSError("copy_file_range unsupported")

    monkeypatch.setattr(safetensors_stream.os, "copy_file_range", unsupported)
    with open(tmp_path / "out.bin", "wb") as out, pytest.raises(SurgeryError, match="only 48 could be read"):
        safetensors_stream._copy_bytes(short_record(tmp_path), out)


def test_read_tensor_truncated(tmp_path):
    with pytest.raises(SurgeryError, match="only 48 could be read"):
        read_tensor(short_record(tmp_path))


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_source_shrinks_after_indexing(tmp_path, dtype):
    path = valid_file(tmp_path / "m.safetensors")
    records = index_checkpoint([path])
    os.truncate(path, path.stat().st_size - 8)
    (tmp_path / "out").mkdir()
    tensors = [OutputTensor(name, record, dtype) for name, record in records.items()]
    with pytest.raises(SurgeryError, match="truncated: tensor b needs 12 bytes"):
        write_checkpoint_weights(tmp_path / "out", tensors, 1 << 30)


# --- layer consistency ---------------------------------------------------------------------------------------

TAILS = {
    "self_attn.q_proj.weight": (32, 32),
    "mlp.up_proj.weight": (64, 32),
    "input_layernorm.weight": (32,),
}


def layer_map(count: int = 8) -> dict[int, list[tuple[str, str, TensorRecord]]]:
    layers: dict[int, list[tuple[str, str, TensorRecord]]] = {}
    for i in range(count):
        layers[i] = []
        for tail, shape in TAILS.items():
            name = f"model.layers.{i}.{tail}"
            layers[i].append(("model.layers.", tail, TensorRecord(name, Path("m.safetensors"), "F32", shape, 0, 0)))
    return layers


def replace(layers, index: int, tail: str, **changes) -> None:
    for position, (head, other, record) in enumerate(layers[index]):
        if other == tail:
            fields = {**record.__dict__, **changes}
            layers[index][position] = (head, tail, TensorRecord(**fields))


def test_format_layers():
    assert format_layers([0, 1, 2, 3, 4, 6, 7]) == "layers 0-4, 6-7"
    assert format_layers([3]) == "layer 3"
    assert format_layers([5, 1, 3]) == "layers 1, 3, 5"


def test_consistent_layers_pass():
    check_layers_consistent(layer_map())


def test_layer_missing_a_tensor():
    layers = layer_map()
    layers[5] = [item for item in layers[5] if item[1] != "mlp.up_proj.weight"]
    with pytest.raises(SurgeryError, match=r"^layer 5 lacks tensor mlp\.up_proj\.weight that layers 0-4, 6-7 have$"):
        check_layers_consistent(layers)


def test_layer_zero_missing_a_tensor():
    layers = layer_map()
    layers[0] = [item for item in layers[0] if item[1] != "input_layernorm.weight"]
    with pytest.raises(SurgeryError, match="layer 0 lacks tensor input_layernorm.weight that layers 1-7 have"):
        check_layers_consistent(layers)


def test_layer_with_extra_tensor():
    layers = layer_map()
    record = TensorRecord("model.layers.2.mlp.gate.weight", Path("m"), "F32", (4, 32), 0, 0)
    layers[2].append(("model.layers.", "mlp.gate.weight", record))
    with pytest.raises(SurgeryError, match="layer 2 has tensor mlp.gate.weight that layers 0-1, 3-7 lack"):
        check_layers_consistent(layers)


def test_layer_with_wrong_shape():
    layers = layer_map()
    replace(layers, 3, "mlp.up_proj.weight", shape=(48, 32))
    with pytest.raises(
        SurgeryError,
        match=r"layer 3 tensor mlp\.up_proj\.weight is F32 \[48, 32\] but layers 0-2, 4-7 have F32 \[64, 32\]",
    ):
        check_layers_consistent(layers)


def test_layer_with_wrong_dtype_and_more_problems():
    layers = layer_map()
    replace(layers, 6, "self_attn.q_proj.weight", dtype="F16")
    replace(layers, 1, "input_layernorm.weight", shape=(31,))
    with pytest.raises(SurgeryError, match=r"^layer 1 tensor input_layernorm.weight .*\(and 1 more layer incons"):
        check_layers_consistent(layers)


# --- config against tensors ----------------------------------------------------------------------------------


def embeddings(name: str, shape: tuple[int, ...]) -> dict[str, TensorRecord]:
    return {name: TensorRecord(name, Path("m"), "F32", shape, 0, 0)}


def test_config_agrees():
    check_config_agrees({"hidden_size": 32, "vocab_size": 96}, embeddings("model.embed_tokens.weight", (96, 32)))
    check_config_agrees({}, embeddings("model.embed_tokens.weight", (96, 32)))  # nothing stated, nothing checked


def test_config_hidden_size_mismatch():
    with pytest.raises(
        SurgeryError, match=r"^config hidden_size=64 disagrees with model.embed_tokens.weight shape \[96, 32\]"
    ):
        check_config_agrees({"hidden_size": 64, "vocab_size": 96}, embeddings("model.embed_tokens.weight", (96, 32)))


def test_config_vocab_size_mismatch():
    with pytest.raises(SurgeryError, match=r"config vocab_size=100 disagrees with gpt_neox.embed_in.weight"):
        check_config_agrees({"hidden_size": 32, "vocab_size": 100}, embeddings("gpt_neox.embed_in.weight", (96, 32)))


def test_config_mismatch_in_bert_and_gpt2_names():
    with pytest.raises(SurgeryError, match="config hidden_size=16 disagrees with bert.embeddings.word_embeddings"):
        check_config_agrees({"hidden_size": 16}, embeddings("bert.embeddings.word_embeddings.weight", (96, 32)))
    with pytest.raises(SurgeryError, match="config n_embd=16 disagrees with transformer.wte.weight"):
        check_config_agrees({"n_embd": 16}, embeddings("transformer.wte.weight", (96, 32)))


def test_config_mismatch_in_lm_head():
    records = {**embeddings("model.embed_tokens.weight", (96, 32)), **embeddings("lm_head.weight", (96, 48))}
    with pytest.raises(SurgeryError, match=r"config hidden_size=32 disagrees with lm_head.weight shape \[96, 48\]"):
        check_config_agrees({"hidden_size": 32, "vocab_size": 96}, records)


def test_config_check_ignores_other_tensors():
    records = {
        **embeddings("bert.embeddings.position_embeddings.weight", (512, 32)),
        **embeddings("model.embed_tokens.weight.scale", (7,)),
        **embeddings("model.norm.weight", (32,)),
    }
    check_config_agrees({"hidden_size": 32, "vocab_size": 96}, records)


# --- verifying the written checkpoint ------------------------------------------------------------------------


def written(tmp_path: Path, max_shard_bytes: int = 1 << 30) -> tuple[list[Path], dict]:
    records = index_checkpoint([valid_file(tmp_path / "source.safetensors")])
    tensors = [OutputTensor(f"out.{name}", record, record.dtype) for name, record in records.items()]
    out = tmp_path / "out"
    out.mkdir()
    return write_checkpoint_weights(out, tensors, max_shard_bytes), expected_outputs(tensors)


def test_verify_written_passes(tmp_path):
    files, expected = written(tmp_path)
    verify_written(files, expected)


def test_verify_written_sharded_passes(tmp_path):
    files, expected = written(tmp_path, max_shard_bytes=16)
    assert len(files) == 2
    verify_written(files, expected)


def test_verify_written_missing_tensor(tmp_path):
    files, expected = written(tmp_path)
    with pytest.raises(SurgeryError, match="the written checkpoint lacks tensor out.c"):
        verify_written(files, {**expected, "out.c": ("F32", (2,))})


def test_verify_written_extra_tensor(tmp_path):
    files, expected = written(tmp_path)
    del expected["out.a"]
    with pytest.raises(SurgeryError, match="the written checkpoint has unexpected tensor out.a"):
        verify_written(files, expected)


def test_verify_written_wrong_shape_and_dtype(tmp_path):
    files, expected = written(tmp_path)
    with pytest.raises(SurgeryError, match=r"written tensor out.b is F32 \[3\] but should be F32 \[1, 3\]"):
        verify_written(files, {**expected, "out.b": ("F32", (1, 3))})
    with pytest.raises(SurgeryError, match=r"written tensor out.a is F32 \[2, 2\] but should be BF16 \[2, 2\]"):
        verify_written(files, {**expected, "out.a": ("BF16", (2, 2))})


def test_verify_written_incomplete_file(tmp_path):
    files, expected = written(tmp_path)
    with open(files[0], "ab") as handle:
        handle.write(b"junk")
    with pytest.raises(SurgeryError, match="is .* bytes but its header describes"):
        verify_written(files, expected)
    os.truncate(files[0], files[0].stat().st_size - 8)
    with pytest.raises(SurgeryError, match="truncated file"):
        verify_written(files, expected)


def test_verify_written_index_disagrees(tmp_path):
    files, expected = written(tmp_path, max_shard_bytes=16)
    index = files[0].parent / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["out.a"] = files[1].name
    index.write_text(json.dumps(data))
    with pytest.raises(SurgeryError, match="maps tensor out.a to 'model-00002-of-00002.safetensors'"):
        verify_written(files, expected)
    index.unlink()
    with pytest.raises(SurgeryError, match="cannot read .*index.json"):
        verify_written(files, expected)
