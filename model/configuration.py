"""Typed configuration of MiniCPM-V 2.6, read from the official ``config.json``.

The official ``config.json`` is flat: the Qwen2 language-model settings sit at the top level beside the
multimodal ones, and the SigLIP vision settings are nested under ``vision_config``. This module turns it
into three frozen dataclasses and back, and builds the transformers configs our modules need.

Values in the file always win. Where the file lacks a key, the official class default applies, which is
not always the value the real 2.6 file holds: ``drop_vision_last_layer`` defaults to True and
``slice_config.max_slice_nums`` to 1 (MODEL_SPEC §2.1). ``MiniCPMVConfig.full_size()`` is the real file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from transformers import Qwen2Config
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig

from model.errors import CheckpointError

VISION_MODEL_TYPES = ("siglip", "siglip_vision_model")
SUPPORTED_VERSION = 2.6


@dataclass(frozen=True)
class TextConfig:
    """The Qwen2 language model (top-level keys of config.json); defaults are Qwen2-7B as in 2.6."""

    vocab_size: int = 151666
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    tie_word_embeddings: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = 131072
    max_window_layers: int = 28
    attention_dropout: float = 0.0
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151645


@dataclass(frozen=True)
class VisionConfig:
    """The SigLIP-400M "navit" encoder (``vision_config`` in config.json)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 980
    num_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    model_type: str = "siglip"

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class MiniCPMVConfig:
    """Everything the model needs to build its modules; see the module docstring for defaults."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    query_num: int = 64
    patch_size: int = 14
    image_size: int = 448
    slice_mode: bool = True
    max_slice_nums: int = 1
    use_image_id: bool = True
    drop_vision_last_layer: bool = True
    vision_batch_size: int = 16
    version: float = SUPPORTED_VERSION
    torch_dtype: str = "bfloat16"

    # ------------------------------------------------------------------ derived sizes
    @property
    def embed_dim(self) -> int:
        """Resampler output width: the LLM's hidden size."""
        return self.text.hidden_size

    @property
    def resampler_heads(self) -> int:
        """The official resampler uses heads of 128 (``embed_dim // 128``)."""
        return max(1, self.text.hidden_size // 128)

    @property
    def vision_layers_used(self) -> int:
        return self.vision.num_hidden_layers - (1 if self.drop_vision_last_layer else 0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def full_size(cls) -> MiniCPMVConfig:
        """The real MiniCPM-V 2.6 config.json (openbmb/MiniCPM-V-2_6)."""
        return cls(max_slice_nums=9, drop_vision_last_layer=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> MiniCPMVConfig:
        """Read the official flat layout; raises CheckpointError naming ``source`` when it is not 2.6."""
        model_type = raw.get("model_type")
        if model_type != "minicpmv":
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, expected 'minicpmv' (MiniCPM-V 2.6)"
            )
        version = raw.get("version", SUPPORTED_VERSION)
        try:
            version_ok = math.isclose(float(version), SUPPORTED_VERSION)
        except (TypeError, ValueError):
            version_ok = False
        if not version_ok:
            raise CheckpointError(
                f"{source}: version is {version!r}; only MiniCPM-V {SUPPORTED_VERSION} is supported"
            )
        vision_raw = raw.get("vision_config")
        if not isinstance(vision_raw, dict):
            raise CheckpointError(f"{source}: 'vision_config' is missing or not an object")
        vision_type = vision_raw.get("model_type", "siglip")
        if vision_type not in VISION_MODEL_TYPES:
            raise CheckpointError(
                f"{source}: vision_config.model_type is {vision_type!r}, expected one of {VISION_MODEL_TYPES}"
            )
        text = _pick(TextConfig, raw)
        if "rope_theta" not in raw and isinstance(raw.get("rope_parameters"), dict):
            text = replace(text, rope_theta=float(raw["rope_parameters"].get("rope_theta", text.rope_theta)))
        vision = _pick(VisionConfig, vision_raw)
        slice_config = raw.get("slice_config") or {}
        top = {k: raw[k] for k in _TOP_KEYS if k in raw}
        if "max_slice_nums" in slice_config:
            top["max_slice_nums"] = slice_config["max_slice_nums"]
        config = cls(text=text, vision=vision, **top)
        config.validate(source)
        return config

    @classmethod
    def from_folder(cls, folder: str | Path) -> MiniCPMVConfig:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{folder}: no config.json (not a MiniCPM-V 2.6 checkpoint folder)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path))

    def validate(self, source: str = "config") -> None:
        """Reject sizes the modules cannot be built from, naming the setting."""
        _check_types(self.text, source, "")
        _check_types(self.vision, source, "vision_config.")
        _check_types(self, source, "")
        t, v = self.text, self.vision
        checks = [
            (t.hidden_size % t.num_attention_heads == 0, "hidden_size must divide by num_attention_heads"),
            (
                t.num_attention_heads % t.num_key_value_heads == 0,
                "num_attention_heads must divide by num_key_value_heads",
            ),
            (
                v.hidden_size % v.num_attention_heads == 0,
                "vision_config.hidden_size must divide by vision_config.num_attention_heads",
            ),
            (self.embed_dim % self.resampler_heads == 0, "hidden_size must divide by hidden_size // 128"),
            (self.embed_dim % 4 == 0, "hidden_size must divide by 4 (2-D sin-cos table)"),
            (self.vision_layers_used >= 1, "the vision tower needs at least one layer"),
            (self.vision_batch_size >= 1, "vision_batch_size must be >= 1"),
            (self.query_num >= 1, "query_num must be >= 1"),
            (v.patch_size == self.patch_size, "vision_config.patch_size must equal patch_size"),
        ]
        for ok, why in checks:
            if not ok:
                raise CheckpointError(f"{source}: {why}")

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """The official flat config.json layout (what ``from_dict`` reads)."""
        out: dict[str, Any] = {"architectures": ["MiniCPMV"], "model_type": "minicpmv"}
        out.update(asdict(self.text))
        for key in _TOP_KEYS:
            out[key] = getattr(self, key)
        out["slice_config"] = {"max_slice_nums": self.max_slice_nums, "model_type": "minicpmv"}
        out["vision_config"] = asdict(self.vision)
        return out

    def qwen2_config(self, attn_implementation: str = "sdpa") -> Qwen2Config:
        t = self.text
        config = Qwen2Config(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            hidden_act=t.hidden_act,
            max_position_embeddings=t.max_position_embeddings,
            rms_norm_eps=t.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
            tie_word_embeddings=t.tie_word_embeddings,
            use_sliding_window=t.use_sliding_window,
            sliding_window=t.sliding_window,
            max_window_layers=t.max_window_layers,
            attention_dropout=t.attention_dropout,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
        )
        config._attn_implementation = attn_implementation
        return config

    def idefics2_vision_config(self, attn_implementation: str = "sdpa") -> Idefics2VisionConfig:
        v = self.vision
        config = Idefics2VisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=self.vision_layers_used,
            num_attention_heads=v.num_attention_heads,
            num_channels=v.num_channels,
            image_size=v.image_size,
            patch_size=v.patch_size,
            hidden_act=v.hidden_act,
            layer_norm_eps=v.layer_norm_eps,
            attention_dropout=v.attention_dropout,
        )
        config._attn_implementation = attn_implementation
        return config


_TOP_KEYS = (
    "query_num",
    "patch_size",
    "image_size",
    "slice_mode",
    "use_image_id",
    "drop_vision_last_layer",
    "vision_batch_size",
    "version",
    "torch_dtype",
)


def _pick(cls: type, raw: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from the keys of ``raw`` it knows; the others belong elsewhere."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


_TYPE_CHECKS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


def _check_types(config: Any, source: str, prefix: str) -> None:
    """Each scalar setting must have its declared type: a ``"256"`` or a ``true`` where a size belongs
    would otherwise fail far away, in module construction, with an unrelated message."""
    for f in fields(config):
        declared = str(f.type)
        optional = declared.endswith(" | None")
        kinds = _TYPE_CHECKS.get(declared.removesuffix(" | None"))
        if kinds is None:
            continue  # nested configs are checked on their own
        value = getattr(config, f.name)
        if value is None and optional:
            continue
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise CheckpointError(
                f"{source}: {prefix}{f.name} is {value!r} ({type(value).__name__}), expected {declared}"
            )
