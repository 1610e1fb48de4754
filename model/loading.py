"""Finding and strictly loading a MiniCPM-V 2.6 checkpoint (local folder or hub id).

A checkpoint is the official repo layout: ``config.json``, ``preprocessor_config.json``, the tokenizer
files and the weights as ``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
Loading is strict and checked before any tensor is read: every parameter of the built model must be
in the files with its exact shape, and the files may hold nothing else. Tensors are read straight onto
the target device and assigned into modules built on the meta device, so weights exist once in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from model.errors import CheckpointError, WeightsNotFoundError
from model.quantization import (
    Bnb4bitConfig,
    load_4bit_layer,
    quantized_modules,
    quantized_tensor_keys,
    replace_with_4bit,
)

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
_SHOWN = 8  # names listed in an error message before "... and N more"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU. A device this machine lacks is an error here,
    before any weights are read, rather than a pinned-memory failure deep inside safetensors."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device (try 'cuda', 'cuda:1' or 'cpu')") from exc
    if resolved.type == "cpu":
        return torch.device("cpu")  # "cpu:0" is the same device; safetensors only takes "cpu"
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device {device!r}: CUDA is not available to this torch ({torch.__version__}); "
                "install a CUDA build of torch (see the README) or pass device='cpu'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; pass device='cpu'")
    return resolved


def resolve_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` means bfloat16 on CUDA and float32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(
            f"dtype {dtype!r} is not a floating-point torch dtype (try 'bfloat16', 'float16' or 'float32')"
        )
    return resolved


def resolve_checkpoint(path_or_hub_id: str | Path) -> Path:
    """A local checkpoint folder, or the folder of a hub id's snapshot (downloaded if the network allows)."""
    text = str(path_or_hub_id)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(
                f"{local} is a file; expected a checkpoint folder (config.json, safetensors)"
            )
        return local
    if not _looks_like_hub_id(text):
        raise WeightsNotFoundError(f"checkpoint folder {local} does not exist")
    return _download(text)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:  # a cached snapshot needs no network
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (OSError, ValueError):
        log.info("no cached snapshot of %s; downloading", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (OSError, ValueError, HfHubHTTPError) as exc:
        raise WeightsNotFoundError(
            f"no local folder {repo_id!r}, and cannot get the weights of hub id {repo_id!r} "
            f"({type(exc).__name__}: {_first_line(exc)}). "
            f"Download them on a machine with network access (`hf download {repo_id}`) and either copy the "
            "Hugging Face cache here (set HF_HOME to it) or pass the checkpoint folder path instead of the id"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"


def weight_files(folder: Path) -> dict[str, Path]:
    """Map every tensor key to the safetensors file that holds it, from the index or the single file."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({exc})") from exc
        files = {key: folder / name for key, name in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise WeightsNotFoundError(f"{index} lists shard {path.name}, which is not in {folder}")
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        return {key: single for key in _file_keys(single)}
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.safetensors")
    )
    hint = (
        f" (found {', '.join(others)}: only {SINGLE_FILE} or {INDEX_FILE} shards are read)" if others else ""
    )
    raise WeightsNotFoundError(f"{folder}: no weights: neither {INDEX_FILE} nor {SINGLE_FILE}{hint}")


def _file_keys(path: Path) -> list[str]:
    try:
        with safe_open(path, framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_shapes(files: Mapping[str, Path]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor from the safetensors headers alone (no tensor data is read)."""
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    shapes: dict[str, tuple[int, ...]] = {}
    for path, keys in by_file.items():
        try:
            with safe_open(path, framework="pt") as handle:
                present = set(handle.keys())
                for key in keys:
                    if key not in present:
                        raise CheckpointError(
                            f"{path.name}: the index lists tensor {key!r}, but the file lacks it"
                        )
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    return shapes


def check_tensors(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], where: Path
) -> None:
    """Raise CheckpointError naming missing, unexpected and misshapen tensors."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    if misshapen:
        shown = [f"{k} is {list(found[k])}, model needs {list(expected[k])}" for k in misshapen[:_SHOWN]]
        more = f" ... and {len(misshapen) - _SHOWN} more" if len(misshapen) > _SHOWN else ""
        problems.append("shape mismatch: " + "; ".join(shown) + more)
    if problems:
        raise CheckpointError(f"{where}: checkpoint does not fit the model: " + " | ".join(problems))


def _names(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_weights(
    module: nn.Module,
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    ignore_prefixes: tuple[str, ...] = (),
    quantization: Bnb4bitConfig | None = None,
) -> None:
    """Check, then assign every tensor of ``folder`` into ``module`` (built on the meta device).

    ``ignore_prefixes`` name checkpoint tensors the model deliberately does not use (a dropped vision
    layer): they may be present or absent. With ``quantization`` (a bitsandbytes 4-bit checkpoint), the
    layers the files hold packed become ``Linear4bit`` (see :mod:`model.quantization`); the rest load
    and are checked as in a dense checkpoint.
    """
    files = weight_files(folder)
    shapes = {k: s for k, s in read_shapes(files).items() if not k.startswith(ignore_prefixes)}
    expected = {k: tuple(p.shape) for k, p in module.state_dict().items()}
    packed: dict[str, dict[str, str]] = {}
    if quantization is not None:
        for name in quantized_modules(shapes, quantization.quant_type):
            packed[name] = quantized_tensor_keys(name, shapes, quantization)
            for key in packed[name].values():
                del shapes[key]
            expected.pop(f"{name}.weight", None)
            expected.pop(f"{name}.bias", None)
        if not packed:
            raise CheckpointError(
                f"{folder}: config.json declares 4-bit quantization, but no tensor is quantized"
            )
    check_tensors(expected, shapes, folder)
    if packed:
        replace_with_4bit(module, sorted(packed), quantization or Bnb4bitConfig(), dtype)
    target = str(device) if device.type != "cuda" or device.index is not None else "cuda:0"
    state = _read(files, shapes, target, dtype, convert=True)
    module.load_state_dict(state, strict=not packed, assign=True)
    for name, keys in packed.items():
        raw = _read(files, {k: () for k in keys.values()}, target, dtype, convert=False)
        tensors = {field: raw[key] for field, key in keys.items()}
        if "bias" in tensors:
            tensors["bias"] = tensors["bias"].to(dtype)
        try:
            load_4bit_layer(module.get_submodule(name), tensors, torch.device(target), dtype)
        except CheckpointError as exc:
            raise CheckpointError(f"{folder}: layer {name}: {exc}") from exc


def _read(
    files: Mapping[str, Path], keys: Mapping[str, object], target: str, dtype: torch.dtype, *, convert: bool
) -> dict[str, torch.Tensor]:
    """The tensors ``keys`` from their files, on ``target``; floating ones in ``dtype`` when ``convert``."""
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(files[key], []).append(key)
    for path, names in by_file.items():
        log.debug("reading %d tensors from %s", len(names), path.name)
        with safe_open(path, framework="pt", device=target) as handle:
            for key in names:
                tensor = handle.get_tensor(key)
                state[key] = tensor.to(dtype) if convert and tensor.dtype != dtype else tensor
    return state
