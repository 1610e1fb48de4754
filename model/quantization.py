"""Reading bitsandbytes 4-bit checkpoints: the model card's int4 release (openbmb/MiniCPM-V-2_6-int4).

Such a checkpoint is the official layout plus a ``quantization_config`` in ``config.json``
(``quant_method = "bitsandbytes"``, ``load_in_4bit``, ``bnb_4bit_quant_type = "nf4"``, double
quantization) and, for every quantized ``nn.Linear``, its packed weight and statistics instead of a
dense ``weight``::

    llm.model.layers.0.mlp.up_proj.weight                                   uint8 [out*in/2, 1]
    llm.model.layers.0.mlp.up_proj.weight.absmax                            per-block scales
    llm.model.layers.0.mlp.up_proj.weight.quant_map                         the 16 NF4 code values
    llm.model.layers.0.mlp.up_proj.weight.nested_absmax / .nested_quant_map (double quantization)
    llm.model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4     packed JSON: shape, block size

Which layers are quantized is read from the files (a Linear with a ``quant_state`` key), not from the
config's skip list: what the files say is what gets loaded, and a release that skips other modules
still loads. Those layers become ``bitsandbytes.nn.Linear4bit`` (computing in the model's dtype);
every other tensor loads as in a dense checkpoint. bitsandbytes is needed only for such checkpoints
and is imported only then.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.errors import CheckpointError

QUANT_TYPES = ("nf4", "fp4")
STATE_SUFFIX = ".weight.quant_state.bitsandbytes__"
# The statistics beside each packed weight; the nested pair exists only with double quantization.
REQUIRED_STATS = ("absmax", "quant_map")
NESTED_STATS = ("nested_absmax", "nested_quant_map")
INSTALL_HINT = "pip install 'bitsandbytes>=0.45' (it runs on CUDA and, since 0.45, on the CPU)"


@dataclass(frozen=True)
class Bnb4bitConfig:
    """The ``quantization_config`` of a bitsandbytes 4-bit checkpoint."""

    quant_type: str = "nf4"
    double_quant: bool = True

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], *, source: str) -> Bnb4bitConfig | None:
        """None for a dense checkpoint; CheckpointError for a quantization this loader cannot read."""
        quant = raw.get("quantization_config")
        if quant is None:
            return None
        if not isinstance(quant, Mapping):
            raise CheckpointError(f"{source}: 'quantization_config' is not an object")
        method = quant.get("quant_method", "bitsandbytes")
        if method != "bitsandbytes":
            raise CheckpointError(
                f"{source}: quantization_config.quant_method is {method!r}; only bitsandbytes 4-bit "
                "checkpoints (openbmb/MiniCPM-V-2_6-int4) load natively. For AWQ/GPTQ/GGUF releases "
                "serve them with vLLM or llama.cpp and use the remote backend (--model http://HOST:PORT/v1)"
            )
        if quant.get("load_in_8bit"):
            raise CheckpointError(f"{source}: 8-bit bitsandbytes checkpoints are not supported (4-bit only)")
        if not quant.get("load_in_4bit", False):
            raise CheckpointError(
                f"{source}: quantization_config has neither load_in_4bit nor a known method"
            )
        quant_type = quant.get("bnb_4bit_quant_type", "fp4")
        if quant_type not in QUANT_TYPES:
            raise CheckpointError(
                f"{source}: quantization_config.bnb_4bit_quant_type is {quant_type!r}, "
                f"expected one of {', '.join(QUANT_TYPES)}"
            )
        return cls(quant_type=quant_type, double_quant=bool(quant.get("bnb_4bit_use_double_quant", False)))


def quantization_of(folder: Path) -> Bnb4bitConfig | None:
    """The checkpoint's 4-bit quantization (from its config.json), or None for a dense checkpoint."""
    path = folder / "config.json"
    return Bnb4bitConfig.from_config(json.loads(path.read_text(encoding="utf-8")), source=str(path))


def bitsandbytes() -> Any:
    """The bitsandbytes module, or a CheckpointError saying how to install it."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise CheckpointError(
            f"this checkpoint is quantized to 4 bits and needs bitsandbytes: {INSTALL_HINT} ({exc})"
        ) from exc


def quantized_modules(keys: Mapping[str, Any], quant_type: str) -> list[str]:
    """Names of the modules the files hold as packed 4-bit weights."""
    marker = STATE_SUFFIX + quant_type
    names = sorted(k.removesuffix(marker) for k in keys if k.endswith(marker))
    odd = sorted(k for k in keys if STATE_SUFFIX in k and not k.endswith(marker))
    if odd:
        raise CheckpointError(
            f"tensor {odd[0]} is not {quant_type} as quantization_config says ({len(odd)} such tensors)"
        )
    return names


def quantized_tensor_keys(module_name: str, keys: Mapping[str, Any], config: Bnb4bitConfig) -> dict[str, str]:
    """The checkpoint keys of one quantized module, by the names ``Params4bit`` knows them by
    (``absmax``, ``quant_map``, ..., and ``weight`` for the packed data)."""
    base = f"{module_name}.weight"
    stats = [*REQUIRED_STATS, *(NESTED_STATS if config.double_quant else ())]
    wanted = {
        "weight": base,
        f"quant_state.bitsandbytes__{config.quant_type}": base
        + STATE_SUFFIX.removeprefix(".weight")
        + config.quant_type,
    }
    wanted.update({name: f"{base}.{name}" for name in stats})
    missing = [key for key in wanted.values() if key not in keys]
    if missing:
        raise CheckpointError(f"quantized layer {module_name} lacks tensors: {', '.join(missing)}")
    if f"{module_name}.bias" in keys:
        wanted["bias"] = f"{module_name}.bias"
    return wanted


def replace_with_4bit(
    model: nn.Module, names: list[str], config: Bnb4bitConfig, compute_dtype: torch.dtype
) -> None:
    """Swap each named ``nn.Linear`` (on the meta device) for a ``Linear4bit`` of the same shape."""
    bnb = bitsandbytes()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child, None)
        # Only a plain Linear is called as one; a layer whose weight another module reads directly
        # (attention's packed projections) cannot take packed 4-bit data.
        if type(old) is not nn.Linear:
            kind = "no such module" if old is None else f"a {type(old).__name__}, not a plain Linear"
            raise CheckpointError(f"quantized tensor {name}.weight: the model's {name} is {kind}")
        with torch.device("meta"):
            new = bnb.nn.Linear4bit(
                old.in_features,
                old.out_features,
                bias=old.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=config.double_quant,
                quant_type=config.quant_type,
            )
        setattr(parent, child, new)


def load_4bit_layer(
    layer: nn.Module, tensors: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> None:
    """Give a ``Linear4bit`` its packed weight and statistics (and its dense bias)."""
    bnb = bitsandbytes()
    stats = {k: v for k, v in tensors.items() if k not in ("weight", "bias")}
    try:
        weight = bnb.nn.Params4bit.from_prequantized(
            data=tensors["weight"], quantized_stats=stats, requires_grad=False, device=device, module=layer
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot read the 4-bit weight ({type(exc).__name__}: {exc})") from exc
    shape = tuple(weight.quant_state.shape)
    expected = (layer.out_features, layer.in_features)
    if shape != expected:
        raise CheckpointError(f"4-bit weight is {list(shape)}, model needs {list(expected)}")
    layer.weight = weight
    if "bias" in tensors:
        layer.bias = nn.Parameter(tensors["bias"].to(device=device, dtype=dtype), requires_grad=False)
