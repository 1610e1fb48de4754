"""Write the two GGUF files llama.cpp serves MiniCPM-V 2.6 from: the language model and the image encoder.

    python tools/make_gguf.py CHECKPOINT OUT_DIR --llama-cpp LLAMA_CPP_DIR
    python tools/make_gguf.py --tiny OUT_DIR --llama-cpp LLAMA_CPP_DIR

CHECKPOINT is a folder our loader reads (config.json, tokenizer files, model.safetensors or an index with
shards); ``--tiny`` writes the tiny test checkpoint first (``model.tiny``). LLAMA_CPP_DIR is llama.cpp's
source tree (``vendor/llama.cpp`` inside the llama-cpp-python sdist): its own converters do the GGUF
writing, so the files are whatever that llama.cpp release reads.

llama.cpp's ``minicpmv-surgery.py`` splits a checkpoint by loading it with ``trust_remote_code`` (the
official modeling code, which this project does not run). This tool makes the same split from the
safetensors alone: ``llm.*`` becomes a plain Qwen2 folder for ``convert_hf_to_gguf.py``; ``resampler.*``
becomes ``minicpmv.projector`` and ``vpm.*`` becomes ``minicpmv.clip`` for
``minicpmv-convert-image-encoder-to-gguf.py``. Two things the converters assume are supplied here:

- ``convert_hf_to_gguf.py`` recognises a BPE tokenizer's pre-tokenizer by a hash of how it splits a fixed
  text; a tokenizer it does not know (the tiny one) is refused. ``--pre-tokenizer qwen2`` (the default)
  names it instead, as the real 2.6 tokenizer is Qwen2's.
- The image-encoder converter reads its sizes from config.json (so the tiny sizes work) but needs
  ``gguf`` importable: the tree's own ``gguf-py`` is put on the path.

The whole checkpoint passes through memory once (about 16 GB for the full-size model in bfloat16).
Writes OUT_DIR/model-<type>.gguf and OUT_DIR/mmproj-model-f16.gguf, then prints both paths, one a line.
Serve them with ``python -m llama_cpp.server --model OUT_DIR/model-f16.gguf --clip_model_path
OUT_DIR/mmproj-model-f16.gguf --chat_format minicpm-v-2.6``. Exit 2 with one line naming the thing and
the reason when an input is unusable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLM_CONVERTER = "convert_hf_to_gguf.py"
ENCODER_CONVERTER = "tools/mtmd/legacy-models/minicpmv-convert-image-encoder-to-gguf.py"
GGUF_PY = "gguf-py"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
# llama.cpp's minicpmv_version for MiniCPM-V 2.6 (the converter's --help lists them).
MINICPMV_26 = "3"


class GgufError(Exception):
    """An input cannot be turned into GGUF files; the message names it and why."""


def llama_cpp_scripts(tree: Path) -> tuple[Path, Path, Path]:
    """The two converters and gguf-py inside a llama.cpp tree, or an error naming what is missing."""
    parts = (tree / LLM_CONVERTER, tree / ENCODER_CONVERTER, tree / GGUF_PY)
    missing = [str(p.relative_to(tree)) for p in parts if not p.exists()]
    if missing:
        raise GgufError(
            f"{tree}: not a llama.cpp source tree with the MiniCPM-V converters "
            f"(missing {', '.join(missing)}; use vendor/llama.cpp from the llama-cpp-python sdist: "
            "pip download llama-cpp-python --no-binary :all: --no-deps)"
        )
    return parts


def split_checkpoint(checkpoint: Path, work: Path) -> tuple[Path, Path, Path]:
    """Write the Qwen2 folder, minicpmv.projector and minicpmv.clip from a checkpoint folder."""
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    from model.configuration import MiniCPMVConfig
    from model.errors import ModelError
    from model.loading import weight_files

    try:
        config = MiniCPMVConfig.from_folder(checkpoint)
        files = weight_files(checkpoint)
    except ModelError as exc:
        raise GgufError(str(exc)) from exc
    raw_config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in raw_config:
        method = raw_config["quantization_config"].get("quant_method")
        raise GgufError(
            f"{checkpoint}: a quantized checkpoint ({method}); convert the float one "
            "(llama.cpp quantizes GGUF files itself, with llama-quantize)"
        )
    # Each part's tensors under the names its converter reads: the LLM's and the encoder's without
    # their prefix, the projector's with it (as minicpmv-surgery.py writes them).
    parts: dict[str, dict[str, torch.Tensor]] = {"llm.": {}, "resampler.": {}, "vpm.": {}}
    keeps_prefix = {"resampler."}
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    for path, keys in sorted(by_file.items()):
        try:
            with safe_open(path, framework="pt") as handle:
                for key in keys:
                    prefix = next((p for p in parts if key.startswith(p)), None)
                    if prefix is None:
                        raise GgufError(
                            f"{path.name}: tensor {key!r} belongs to no part (llm., resampler., vpm.)"
                        )
                    tensor = handle.get_tensor(key)
                    name = key if prefix in keeps_prefix else key.removeprefix(prefix)
                    # the projector and encoder go as float32 (the surgery's choice); the LLM keeps its dtype
                    parts[prefix][name] = tensor if prefix == "llm." else tensor.float()
        except (SafetensorError, OSError) as exc:
            raise GgufError(f"{path}: not a readable safetensors file ({exc})") from exc
    for prefix, tensors in parts.items():
        if not tensors:
            raise GgufError(f"{checkpoint}: no {prefix}* tensors: not a MiniCPM-V 2.6 checkpoint")

    llm_dir = work / "llm"
    llm_dir.mkdir(parents=True)
    qwen2 = config.qwen2_config()
    qwen2.architectures = ["Qwen2ForCausalLM"]
    qwen2.dtype = raw_config.get("torch_dtype", "bfloat16")
    qwen2.save_pretrained(llm_dir)
    save_file(
        {k: v.contiguous() for k, v in parts["llm."].items()},
        str(llm_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    copied = [name for name in TOKENIZER_FILES if (checkpoint / name).is_file()]
    if "tokenizer.json" not in copied and "vocab.json" not in copied:
        raise GgufError(f"{checkpoint}: no tokenizer (neither tokenizer.json nor vocab.json)")
    for name in copied:
        shutil.copyfile(checkpoint / name, llm_dir / name)

    # The encoder converter reads the sizes from config.json beside the two torch files.
    shutil.copyfile(checkpoint / "config.json", work / "config.json")
    projector = work / "minicpmv.projector"
    clip = work / "minicpmv.clip"
    torch.save(parts["resampler."], projector)
    torch.save(parts["vpm."], clip)
    return llm_dir, projector, clip


def _run(argv: list[str], what: str, env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise GgufError(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")


def convert(
    checkpoint: Path, out_dir: Path, tree: Path, *, outtype: str = "f16", pre_tokenizer: str = "qwen2"
) -> tuple[Path, Path]:
    """Write ``model-<outtype>.gguf`` and ``mmproj-model-f16.gguf`` into ``out_dir``; return both paths."""
    llm_converter, encoder_converter, gguf_py = llama_cpp_scripts(tree)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(gguf_py), str(tree)]))
    llm_gguf = out_dir / f"model-{outtype}.gguf"
    with tempfile.TemporaryDirectory(prefix="vidnarrate-gguf-") as tmp:
        llm_dir, projector, _clip = split_checkpoint(checkpoint, Path(tmp))
        _run(
            [
                sys.executable,
                __file__,
                "--_llm",
                str(llm_dir),
                str(llm_gguf),
                outtype,
                pre_tokenizer,
                str(tree),
            ],
            f"{llm_converter} on {checkpoint}",
            env,
        )
        _run(
            [
                sys.executable,
                str(encoder_converter),
                "-m",
                tmp,
                "--minicpmv-projector",
                str(projector),
                "--output-dir",
                str(out_dir),
                "--minicpmv_version",
                MINICPMV_26,
            ],
            f"{encoder_converter.name} on {checkpoint}",
            env,
        )
    mmproj = out_dir / "mmproj-model-f16.gguf"
    for path in (llm_gguf, mmproj):
        if not path.is_file():
            raise GgufError(f"{path}: the converter finished without writing it")
    return llm_gguf, mmproj


def _convert_llm(llm_dir: str, out: str, outtype: str, pre_tokenizer: str, tree: str) -> None:
    """Run convert_hf_to_gguf.py in this process, naming the pre-tokenizer its hash table may not know."""
    sys.path.insert(0, tree)
    import convert_hf_to_gguf as converter
    from conversion.base import TextModel as text_model
    from conversion.qwen import Qwen2Model

    # Qwen2's tokenizer is BPE (no tokenizer.model): go straight to that path, which needs no sentencepiece.
    Qwen2Model.set_vocab = Qwen2Model._set_vocab_gpt2
    known = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self: object, tokenizer: object) -> str:
        try:
            return str(known(self, tokenizer))
        except NotImplementedError:
            return pre_tokenizer

    text_model.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [LLM_CONVERTER, llm_dir, "--outfile", out, "--outtype", outtype]
    converter.main()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_llm"]:
        _convert_llm(*argv[1:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a MiniCPM-V 2.6 checkpoint folder")
    parser.add_argument("out_dir", type=Path, help="where the two GGUF files go")
    parser.add_argument("--tiny", action="store_true", help="convert the tiny test checkpoint (model.tiny)")
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree")
    parser.add_argument("--outtype", default="f16", choices=("f32", "f16", "bf16", "q8_0"))
    parser.add_argument(
        "--pre-tokenizer", default="qwen2", help="for a tokenizer llama.cpp does not recognise"
    )
    args = parser.parse_args(argv)
    if args.tiny == (args.checkpoint is not None):
        parser.error("give a checkpoint folder or --tiny, not both or neither")
    try:
        llama_cpp_scripts(args.llama_cpp)
        with tempfile.TemporaryDirectory(prefix="vidnarrate-tiny-") as tmp:
            if args.tiny:
                from model.tiny import write_tiny_checkpoint

                checkpoint = write_tiny_checkpoint(tmp)
            else:
                checkpoint = args.checkpoint
                if not (checkpoint / "config.json").is_file():
                    raise GgufError(f"{checkpoint}: no config.json: not a checkpoint folder")
            paths = convert(
                checkpoint,
                args.out_dir,
                args.llama_cpp,
                outtype=args.outtype,
                pre_tokenizer=args.pre_tokenizer,
            )
    except GgufError as exc:
        print(f"make_gguf: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
