"""The MiniCPM-V tokenizer loads without remote code and reads every special id from its files."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
from transformers import Qwen2TokenizerFast

from model.errors import CheckpointError
from model.tokenizer import MiniCPMVTokenizer, as_minicpmv_tokenizer, load_tokenizer

TINY = Path(__file__).resolve().parent / "data" / "oracle" / "tiny_minicpmv26"
SUMMARY = TINY.parent / "expected" / "summary.json"


@pytest.fixture(scope="module")
def tok() -> MiniCPMVTokenizer:
    return load_tokenizer(TINY)


def test_special_ids_match_the_oracle_run(tok: MiniCPMVTokenizer) -> None:
    official = json.loads(SUMMARY.read_text())["meta"]["special_token_ids"]
    assert tok.im_start_id == official["<image>"]
    assert tok.im_end_id == official["</image>"]
    assert tok.slice_start_id == official["<slice>"]
    assert tok.slice_end_id == official["</slice>"]
    assert tok.im_id_start_id == official["<image_id>"]
    assert tok.im_id_end_id == official["</image_id>"]
    assert tok.unk_id == official["<unk>"]
    assert tok.bos_id == official["<|im_start|>"]  # the tokenizer's bos, not config.json's
    assert tok.eos_id == official["<|im_end|>"]
    assert tok.terminator_ids == (official["<|im_end|>"], official["<|endoftext|>"])
    assert tok.decode([tok.newline_id]) == "\n"
    assert len(tok) == json.loads((TINY / "config.json").read_text())["vocab_size"]


def test_loads_without_remote_code_prompt_and_keeps_chat_template(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_prompt(*args: object) -> str:
        raise AssertionError("the tokenizer asked an interactive question")

    monkeypatch.setattr(builtins, "input", no_prompt)
    tok = load_tokenizer(TINY)  # warnings are errors in this suite, so none was issued either
    assert isinstance(tok.hf, Qwen2TokenizerFast)
    template = json.loads((TINY / "tokenizer_config.json").read_text())["chat_template"]
    assert tok.hf.chat_template == template
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encode_adds_no_bos_and_keeps_pad_id_zero_as_bang(tok: MiniCPMVTokenizer) -> None:
    assert tok.encode("!") == [0]
    assert tok.encode("<image><unk></image>") == [tok.im_start_id, tok.unk_id, tok.im_end_id]


def _copy_with_swapped_ids(dest: Path, a: str, b: str) -> Path:
    """A copy of the tiny tokenizer in which tokens ``a`` and ``b`` trade ids."""
    for file in TINY.iterdir():
        if file.name != "model.safetensors":
            shutil.copy(file, dest / file.name)
    swap = {a: b, b: a}
    data = json.loads((dest / "tokenizer.json").read_text())
    for entry in data["added_tokens"]:
        entry["content"] = swap.get(entry["content"], entry["content"])
    (dest / "tokenizer.json").write_text(json.dumps(data))
    added = json.loads((dest / "added_tokens.json").read_text())
    added[a], added[b] = added[b], added[a]
    (dest / "added_tokens.json").write_text(json.dumps(added))
    config = json.loads((dest / "tokenizer_config.json").read_text())
    for entry in config.get("added_tokens_decoder", {}).values():
        entry["content"] = swap.get(entry["content"], entry["content"])
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def test_ids_come_from_the_tokenizer_not_constants(tmp_path: Path, tok: MiniCPMVTokenizer) -> None:
    # The real tokenizer has <unk> at 128244, not at the end: move it and the ids must follow.
    moved = load_tokenizer(_copy_with_swapped_ids(tmp_path, "<unk>", "<|reserved_special_token_5|>"))
    assert moved.unk_id == tok.unk_id - 1
    assert moved.encode("<unk>") == [moved.unk_id]
    moved_slice = load_tokenizer(_copy_with_swapped_ids(tmp_path, "<slice>", "</slice>"))
    assert (moved_slice.slice_start_id, moved_slice.slice_end_id) == (tok.slice_end_id, tok.slice_start_id)


def test_wraps_a_bare_transformers_tokenizer(tok: MiniCPMVTokenizer) -> None:
    assert as_minicpmv_tokenizer(tok) is tok
    assert as_minicpmv_tokenizer(tok.hf).unk_id == tok.unk_id
    with pytest.raises(TypeError, match="MiniCPMVTokenizer"):
        as_minicpmv_tokenizer("not a tokenizer")  # type: ignore[arg-type]


def test_missing_folder_or_files_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_tokenizer_without_chat_template_is_rejected(tok: MiniCPMVTokenizer) -> None:
    bare = Qwen2TokenizerFast.from_pretrained(str(TINY), local_files_only=True)
    bare.chat_template = None
    with pytest.raises(CheckpointError, match="chat template"):
        MiniCPMVTokenizer.from_hf(bare)
