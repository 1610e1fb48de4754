"""A tiny random MiniCPM-V 2.6 for tests and smoke runs: the real architecture, small sizes.

``write_tiny_checkpoint`` writes a complete checkpoint folder in the official layout (config.json,
preprocessor_config.json, tokenizer files, model.safetensors with seeded random weights), and
``build_tiny_model`` loads it through ``MiniCPMV.from_pretrained``: the same code path as the real model.
Everything it needs ships inside the package (``model/tiny_tokenizer/``); its text is gibberish by design.

Sizes are those of the oracle's tiny checkpoint: Qwen2 with hidden 256, 2 layers, 4 heads (2 KV heads),
vocab 536; SigLIP with hidden 64, 2 layers, 4 heads, and the real 980/14 position table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from model.configuration import MiniCPMVConfig, TextConfig, VisionConfig
from model.modeling import MiniCPMV
from model.processing import ProcessorConfig

TOKENIZER_DIR = Path(__file__).resolve().parent / "tiny_tokenizer"

TINY_CONFIG = MiniCPMVConfig(
    text=TextConfig(
        vocab_size=536,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=2,
        sliding_window=None,
        bos_token_id=512,
        eos_token_id=514,
    ),
    vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    max_slice_nums=9,
    drop_vision_last_layer=False,
    torch_dtype="float32",
)

PREPROCESSOR_CONFIG = {
    "image_processor_type": "MiniCPMVImageProcessor",
    "processor_class": "MiniCPMVProcessor",
    "max_slice_nums": 9,
    "scale_resolution": 448,
    "patch_size": 14,
    "use_image_id": True,
    "image_feature_size": 64,
    "im_start": "<image>",
    "im_end": "</image>",
    "slice_start": "<slice>",
    "slice_end": "</slice>",
    "unk": "<unk>",
    "im_id_start": "<image_id>",
    "im_id_end": "</image_id>",
    "slice_mode": True,
    "norm_mean": [0.5, 0.5, 0.5],
    "norm_std": [0.5, 0.5, 0.5],
    "version": 2.6,
}


@torch.no_grad()
def randomise_(module: nn.Module, seed: int) -> None:
    """Fill every parameter in place with seeded random values that exercise every weight.

    Matrices N(0, 1/fan_in); norm weights 1 + 0.2·N; biases 0.1·N; token and position embeddings
    0.5·N; ``resampler.query`` N(0, 1) (the official init leaves it at zero, which hides bugs).
    Parameters are drawn in name order from one generator on their device, so a seed fixes the values
    for a given device.
    """
    params = dict(module.named_parameters())
    generator = None
    for name in sorted(params):
        param = params[name]
        if generator is None:
            generator = torch.Generator(device=param.device).manual_seed(seed)
        mean, std = _distribution(name, tuple(param.shape))
        param.normal_(mean, std, generator=generator)


def _distribution(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    if name.endswith(("embed_tokens.weight", "position_embedding.weight")):
        return 0.0, 0.5
    if name.endswith("resampler.query"):
        return 0.0, 1.0
    if len(shape) == 1:
        is_norm_weight = name.endswith(".weight") and any(k in name for k in ("norm", "ln_"))
        return (1.0, 0.2) if is_norm_weight else (0.0, 0.1)
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    if name.endswith("resampler.proj"):
        fan_in = shape[0]
    return 0.0, fan_in**-0.5


def tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights for ``TINY_CONFIG`` under the official key names."""
    with torch.device("meta"):  # the real class lists the tensors: one source of names and shapes
        skeleton = MiniCPMV(TINY_CONFIG, tokenizer=None, processor_config=ProcessorConfig())
    skeleton.to_empty(device="cpu")
    randomise_(skeleton, seed)
    return {k: v.contiguous() for k, v in skeleton.state_dict().items()}


def write_tiny_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """Write a complete tiny checkpoint folder (official layout) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG.to_dict(), indent=2) + "\n", encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8"
    )
    generation = {
        "bos_token_id": TINY_CONFIG.text.bos_token_id,
        "eos_token_id": TINY_CONFIG.text.eos_token_id,
    }
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    for path in sorted(TOKENIZER_DIR.iterdir()):
        if path.is_file():
            shutil.copyfile(path, folder / path.name)
    save_file(tiny_state_dict(seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def build_tiny_model(seed: int = 0, device: str | torch.device = "cpu") -> MiniCPMV:
    """The tiny model in float32, written to a temporary folder and loaded like any checkpoint."""
    with tempfile.TemporaryDirectory(prefix="vidnarrate-tiny-") as tmp:
        write_tiny_checkpoint(tmp, seed)
        return MiniCPMV.from_pretrained(tmp, device=device, dtype=torch.float32)


# The model card's int4 release keeps these dense (attention's packed output projections, the
# resampler's key/value projection, the output head); every other Linear is NF4 with double quantization.
INT4_SKIP_MODULES = ("out_proj", "kv_proj", "lm_head")
INT4_QUANTIZATION_CONFIG = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
    "llm_int8_skip_modules": list(INT4_SKIP_MODULES),
}


def write_tiny_int4_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """The tiny checkpoint quantized like openbmb/MiniCPM-V-2_6-int4: its ``quantization_config`` and,
    for each quantized Linear, the packed weight and statistics bitsandbytes itself serialises
    (``weight``, ``weight.absmax``, ``weight.quant_map``, ``weight.nested_*``,
    ``weight.quant_state.bitsandbytes__nf4``). Needs bitsandbytes."""
    import bitsandbytes.functional as bnbf

    folder = write_tiny_checkpoint(folder, seed)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = INT4_QUANTIZATION_CONFIG
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    with torch.device("meta"):
        skeleton = MiniCPMV(TINY_CONFIG, tokenizer=None, processor_config=ProcessorConfig())
    dense = tiny_state_dict(seed)
    state: dict[str, torch.Tensor] = {}
    quantized = {
        name
        for name, module in skeleton.named_modules()
        if type(module) is nn.Linear and name.rpartition(".")[2] not in INT4_SKIP_MODULES
    }
    for key, tensor in dense.items():
        module_name = key.removesuffix(".weight")
        if module_name not in quantized:
            state[key] = tensor
            continue
        packed, quant_state = bnbf.quantize_4bit(tensor, quant_type="nf4", compress_statistics=True)
        state[key] = packed
        for stat, value in quant_state.as_dict(packed=True).items():
            state[f"{key}.{stat}"] = value.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
