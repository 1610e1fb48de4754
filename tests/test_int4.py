"""The model card's int4 checkpoint layout (bitsandbytes NF4, double quantization) loads natively.

The checkpoint is the tiny model written in the exact layout of openbmb/MiniCPM-V-2_6-int4
(``model.tiny.write_tiny_int4_checkpoint``: bitsandbytes' own serialisation of each quantized Linear).
bitsandbytes runs these 4-bit layers on the CPU here; the full-size GPU figures come from
``tools/bench_model.py --full-size --int4``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from liverun import VIDNARRATE
from PIL import Image
from realparts import make_clip
from safetensors.torch import load_file, save_file

from model.errors import CheckpointError
from model.modeling import MiniCPMV
from model.tiny import INT4_SKIP_MODULES, tiny_state_dict, write_tiny_checkpoint, write_tiny_int4_checkpoint

bnb = pytest.importorskip("bitsandbytes", reason="the int4 extra (bitsandbytes) is not installed")
import bitsandbytes.functional as bnbf  # noqa: E402

SEED = 5


@pytest.fixture(scope="module")
def int4_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_int4_checkpoint(tmp_path_factory.mktemp("int4"), seed=SEED)


@pytest.fixture(scope="module")
def int4_model(int4_folder: Path) -> MiniCPMV:
    return MiniCPMV.from_pretrained(int4_folder, device="cpu", dtype=torch.float32)


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in folder.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def _messages(seed: int = 0) -> list[dict]:
    pixels = (np.random.default_rng(seed).random((96, 128, 3)) * 255).astype(np.uint8)
    return [{"role": "user", "content": [Image.fromarray(pixels), "What is shown?"]}]


def test_quantized_layers_are_4bit_and_the_skipped_ones_dense(int4_model: MiniCPMV) -> None:
    four_bit = {n for n, m in int4_model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    dense = {n for n, m in int4_model.named_modules() if type(m) is torch.nn.Linear}
    assert "llm.model.layers.0.mlp.up_proj" in four_bit
    assert any(n.startswith("vpm.") for n in four_bit)
    assert all(n.rpartition(".")[2] in INT4_SKIP_MODULES for n in dense)
    assert "llm.lm_head" in dense and "resampler.kv_proj" in dense
    weight = int4_model.llm.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4"
    assert weight.quant_state.nested, "double quantization's nested statistics were not read"


def test_outputs_equal_a_dense_model_with_the_dequantized_weights(
    int4_folder: Path, int4_model: MiniCPMV, tmp_path: Path
) -> None:
    """The loaded 4-bit layers compute with the stored 4-bit weights: a dense float32 model given the
    dequantized tensors gives nearly the same logits, far nearer than the weights before quantization.
    (Not bit-exact on the CPU: bitsandbytes' CPU kernel repacks the weights and keeps the block scales in
    bfloat16 when it loads them; on CUDA it dequantizes the stored values as they are.)"""
    stored = load_file(str(int4_folder / "model.safetensors"))
    original = tiny_state_dict(SEED)
    dequantized: dict[str, torch.Tensor] = {}
    for key in original:
        marker = f"{key}.quant_state.bitsandbytes__nf4"
        if marker not in stored:
            dequantized[key] = stored[key]
            continue
        stats = {k.removeprefix(f"{key}."): v for k, v in stored.items() if k.startswith(f"{key}.")}
        state = bnbf.QuantState.from_dict(stats, device=torch.device("cpu"))
        dequantized[key] = bnbf.dequantize_4bit(stored[key], state).to(torch.float32)
    reference_folder = _copy(int4_folder, tmp_path / "dequantized")
    config = json.loads((reference_folder / "config.json").read_text())
    del config["quantization_config"]
    (reference_folder / "config.json").write_text(json.dumps(config))
    save_file(dequantized, str(reference_folder / "model.safetensors"))
    reference = MiniCPMV.from_pretrained(reference_folder, device="cpu", dtype=torch.float32)
    dense = MiniCPMV.from_pretrained(write_tiny_checkpoint(tmp_path / "dense", SEED), device="cpu")
    messages = _messages()
    with torch.inference_mode():
        got = int4_model.logits(int4_model.prepare(messages))
        want = reference.logits(reference.prepare(messages))
        before = dense.logits(dense.prepare(messages))
    error = (got - want).abs().max().item()
    quantization_error = (before - want).abs().max().item()
    assert quantization_error > 0.3, "quantizing the tiny weights should move the logits"
    assert error < 0.1 * quantization_error, (error, quantization_error)
    assert int4_model.chat(messages, sampling=False, max_new_tokens=6)


def test_weights_take_less_memory_than_the_dense_model(int4_model: MiniCPMV) -> None:
    def stored_bytes(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

    layer = int4_model.llm.model.layers[0].mlp
    dense_bytes = sum(lin.in_features * lin.out_features * 4 for lin in (layer.up_proj, layer.gate_proj))
    assert stored_bytes(layer.up_proj) + stored_bytes(layer.gate_proj) < dense_bytes / 6


def test_missing_bitsandbytes_is_an_error_saying_what_to_install(
    int4_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(CheckpointError, match=r"needs bitsandbytes: pip install 'bitsandbytes"):
        MiniCPMV.from_pretrained(int4_folder, device="cpu")


def test_other_quantization_methods_are_refused_by_name(int4_folder: Path, tmp_path: Path) -> None:
    folder = _copy(int4_folder, tmp_path / "awq")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"quant_method is 'awq'.*remote backend"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_a_missing_statistic_names_the_layer_and_tensor(int4_folder: Path, tmp_path: Path) -> None:
    folder = _copy(int4_folder, tmp_path / "broken")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["llm.model.layers.1.mlp.down_proj.weight.absmax"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.down_proj lacks tensors: .*weight\.absmax"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_declared_quantization_without_quantized_tensors_is_an_error(tmp_path: Path) -> None:
    from model.tiny import INT4_QUANTIZATION_CONFIG

    folder = write_tiny_checkpoint(tmp_path / "dense", seed=1)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = INT4_QUANTIZATION_CONFIG
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="declares 4-bit quantization, but no tensor is quantized"):
        MiniCPMV.from_pretrained(folder, device="cpu")


def test_a_4bit_weight_of_the_wrong_shape_is_named(int4_folder: Path, tmp_path: Path) -> None:
    folder = _copy(int4_folder, tmp_path / "misshapen")
    tensors = load_file(str(folder / "model.safetensors"))
    key = "llm.model.layers.0.mlp.up_proj.weight"
    packed, state = bnbf.quantize_4bit(torch.randn(8, 16), quant_type="nf4", compress_statistics=True)
    tensors[key] = packed
    for stat, value in state.as_dict(packed=True).items():
        tensors[f"{key}.{stat}"] = value.contiguous()
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"layers\.0\.mlp\.up_proj: 4-bit weight is \[8, 16\], model needs"
    ):
        MiniCPMV.from_pretrained(folder, device="cpu")


@pytest.mark.integration
def test_caption_command_runs_on_the_int4_checkpoint(int4_folder: Path, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=4.0)
    out = tmp_path / "captions.jsonl"
    result = subprocess.run(
        [str(VIDNARRATE), "caption", str(clip), "--model", str(int4_folder),
         "--set", "captions.max_new_tokens=4", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(line["type"] == "caption" for line in lines)
