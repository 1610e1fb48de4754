"""Loading checkpoints: strict keys and shapes, sharded and single-file layouts, config parsing, hub ids.

Broken checkpoints are built in tmp from the tiny checkpoint (model.tiny.write_tiny_checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.configuration import MiniCPMVConfig
from model.errors import CheckpointError, WeightsNotFoundError
from model.loading import resolve_checkpoint, resolve_device, resolve_dtype
from model.modeling import MiniCPMV
from model.tiny import TINY_CONFIG, write_tiny_checkpoint
from tests.conftest import DATA_DIR

ORACLE_CONFIG = DATA_DIR / "oracle" / "tiny_minicpmv26" / "config.json"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


def copy_checkpoint(source: Path, target: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.name != "model.safetensors":
            (target / path.name).write_bytes(path.read_bytes())
    if state is not None:
        save_file(state, str(target / "model.safetensors"))
    return target


def test_loads_every_tensor_exactly(checkpoint: Path) -> None:
    model = MiniCPMV.from_pretrained(checkpoint, device="cpu")
    stored = load_file(str(checkpoint / "model.safetensors"))
    state = model.state_dict()
    assert set(state) == set(stored)
    assert all(torch.equal(state[k], v) for k, v in stored.items())
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert not model.training
    assert all(not t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_dtype_is_applied_while_loading(checkpoint: Path) -> None:
    model = MiniCPMV.from_pretrained(checkpoint, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay exact


def test_sharded_checkpoint_with_index_loads_like_the_single_file(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    folder = copy_checkpoint(checkpoint, tmp_path / "sharded")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(folder / name))
        weight_map.update({k: name for k in shard_keys})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    model = MiniCPMV.from_pretrained(folder, device="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="model-00002-of-00002.safetensors"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_missing_tensor_is_named(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    del state["resampler.ln_kv.bias"]
    folder = copy_checkpoint(checkpoint, tmp_path / "missing", state)
    with pytest.raises(CheckpointError, match=r"missing tensors: resampler\.ln_kv\.bias"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_unexpected_tensor_is_named(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    state["vpm.head.probe"] = torch.zeros(1, 1, 64)
    folder = copy_checkpoint(checkpoint, tmp_path / "extra", state)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: vpm\.head\.probe"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_misshapen_tensor_is_named_with_both_shapes(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(str(checkpoint / "model.safetensors"))
    state["resampler.proj"] = state["resampler.proj"][:, :128].contiguous()
    folder = copy_checkpoint(checkpoint, tmp_path / "misshapen", state)
    with pytest.raises(CheckpointError, match=r"resampler\.proj is \[256, 128\], model needs \[256, 256\]"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_folder_without_weights_is_a_clear_error(checkpoint: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(checkpoint, tmp_path / "noweights")
    with pytest.raises(WeightsNotFoundError, match="noweights: no weights"):
        MiniCPMV.from_pretrained(folder, device="cpu")
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="found pytorch_model.bin"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_corrupt_safetensors_is_a_clear_error(checkpoint: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(checkpoint, tmp_path / "corrupt")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_missing_folder_and_file_paths() -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_checkpoint("/nonexistent/minicpm-v-2_6")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(ORACLE_CONFIG)


def test_hub_id_without_network_or_repo_says_how_to_get_the_weights() -> None:
    """No network here (and in CI the repo does not exist): either way a WeightsNotFoundError that helps."""
    repo = "vidnarrate-tests/no-such-minicpm-v-checkpoint"
    with pytest.raises(WeightsNotFoundError) as info:
        MiniCPMV.from_pretrained(repo, device="cpu")
    message = str(info.value)
    assert repo in message and "HF_HOME" in message and "folder" in message


def test_drop_vision_last_layer_from_config_is_honoured(checkpoint: Path, tmp_path: Path) -> None:
    """The class default drops the last vision layer; the file's value wins, and the unused layer may stay."""
    folder = copy_checkpoint(checkpoint, tmp_path / "drop", load_file(str(checkpoint / "model.safetensors")))
    config = json.loads((folder / "config.json").read_text())
    del config["drop_vision_last_layer"]
    (folder / "config.json").write_text(json.dumps(config))
    model = MiniCPMV.from_pretrained(folder, device="cpu")
    assert len(model.vpm.encoder.layers) == TINY_CONFIG.vision.num_hidden_layers - 1


def test_config_reads_the_official_layout_and_both_vision_model_types() -> None:
    raw = json.loads(ORACLE_CONFIG.read_text())
    assert raw["vision_config"]["model_type"] == "siglip_vision_model"
    config = MiniCPMVConfig.from_dict(raw)
    assert config.max_slice_nums == 9 and config.drop_vision_last_layer is False
    assert config.text.hidden_size == 256 and config.vision.hidden_size == 64
    raw["vision_config"]["model_type"] = "siglip"
    assert MiniCPMVConfig.from_dict(raw).vision.hidden_size == 64
    assert MiniCPMVConfig.from_dict(config.to_dict()) == config

    absent = {k: v for k, v in raw.items() if k not in ("slice_config", "drop_vision_last_layer")}
    defaults = MiniCPMVConfig.from_dict(absent)
    assert defaults.max_slice_nums == 1 and defaults.drop_vision_last_layer is True  # official class defaults


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model_type": "llava"}, "model_type is 'llava'"),
        ({"version": 2.5}, "version is 2.5"),
        (
            {"vision_config": {"model_type": "clip_vision_model"}},
            "vision_config.model_type is 'clip_vision_model'",
        ),
        ({"num_attention_heads": 3}, "hidden_size must divide by num_attention_heads"),
        ({"hidden_size": "256"}, r"hidden_size is '256' \(str\), expected int"),
        ({"use_image_id": "yes"}, r"use_image_id is 'yes' \(str\), expected bool"),
    ],
)
def test_config_rejects_what_is_not_minicpm_v_26(change: dict, message: str) -> None:
    raw = json.loads(ORACLE_CONFIG.read_text()) | change
    with pytest.raises(CheckpointError, match=message):
        MiniCPMVConfig.from_dict(raw, source="x/config.json")


def test_device_and_dtype_defaults() -> None:
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(torch.device("cpu"), None) == torch.float32
    assert resolve_dtype(torch.device("cuda"), None) == torch.bfloat16
    assert resolve_dtype(torch.device("cpu"), "torch.float16") == torch.float16
    with pytest.raises(ValueError, match="'float7'"):
        resolve_dtype(torch.device("cpu"), "float7")


def test_devices_are_checked_before_any_weights_are_read() -> None:
    assert resolve_device("cpu:0") == torch.device("cpu")  # safetensors accepts only "cpu"
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available to this torch"):
            resolve_device("cuda")


def test_dtypes_must_be_floating_point() -> None:
    for dtype in (torch.int8, "int64", "bool"):
        with pytest.raises(ValueError, match="not a floating-point torch dtype"):
            resolve_dtype(torch.device("cpu"), dtype)


def test_unreadable_tokenizer_is_named(checkpoint: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(checkpoint, tmp_path / "ck")
    (folder / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"tokenizer files in {folder} cannot be read"):
        MiniCPMV.from_pretrained(folder, device="cpu")
