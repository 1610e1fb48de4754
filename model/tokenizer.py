"""The MiniCPM-V 2.6 tokenizer, loaded without remote code, and its special token ids.

The checkpoint names ``MiniCPMVTokenizerFast`` (remote code) as its class. That class is a
``Qwen2TokenizerFast`` plus id properties, so we load the files with ``Qwen2TokenizerFast`` by name
(``AutoTokenizer`` would ask whether to run remote code) and read the ids ourselves, always from the
tokenizer: ``<unk>`` is 535 in the tiny test tokenizer but 128244, inside the BPE range, in the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, Qwen2TokenizerFast  # type: ignore[attr-defined]

from model.errors import CheckpointError

# The official code pads batches with the literal id 0 (which is "!") and drops every 0 from answers,
# whatever the tokenizer's pad token is (MODEL_SPEC §7.3, §8.2).
PAD_ID = 0

IM_START = "<image>"
IM_END = "</image>"
SLICE_START = "<slice>"
SLICE_END = "</slice>"
IM_ID_START = "<image_id>"
IM_ID_END = "</image_id>"
UNK = "<unk>"
IM_END_CHAT = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


@dataclass(frozen=True)
class MiniCPMVTokenizer:
    """A transformers tokenizer (``hf``) with the MiniCPM-V special ids read from it.

    ``bos_id``/``eos_id`` are the tokenizer's own (``<|im_start|>``/``<|im_end|>``), not config.json's
    ``bos_token_id`` (``<|endoftext|>``). ``terminator_ids`` end generation: ``<|im_end|>`` and
    ``<|endoftext|>``.
    """

    hf: PreTrainedTokenizerBase = field(repr=False)
    im_start_id: int
    im_end_id: int
    slice_start_id: int
    slice_end_id: int
    im_id_start_id: int
    im_id_end_id: int
    unk_id: int
    newline_id: int
    bos_id: int | None
    eos_id: int
    terminator_ids: tuple[int, ...]

    # Token strings, for building placeholder text.
    im_start: str = IM_START
    im_end: str = IM_END
    slice_start: str = SLICE_START
    slice_end: str = SLICE_END
    im_id_start: str = IM_ID_START
    im_id_end: str = IM_ID_END
    unk: str = UNK

    @classmethod
    def from_hf(cls, hf: PreTrainedTokenizerBase) -> MiniCPMVTokenizer:
        """Wrap an already loaded tokenizer; fails if it lacks a MiniCPM-V special token."""
        if getattr(hf, "chat_template", None) is None:
            raise CheckpointError(f"tokenizer {_name(hf)} has no chat template (tokenizer_config.json)")
        newline = hf.encode("\n", add_special_tokens=False)
        if len(newline) != 1:
            raise CheckpointError(f'tokenizer {_name(hf)} does not encode "\\n" as one token: {newline}')
        if hf.eos_token_id is None:
            raise CheckpointError(f"tokenizer {_name(hf)} has no eos token")
        return cls(
            hf=hf,
            im_start_id=_token_id(hf, IM_START),
            im_end_id=_token_id(hf, IM_END),
            slice_start_id=_token_id(hf, SLICE_START),
            slice_end_id=_token_id(hf, SLICE_END),
            im_id_start_id=_token_id(hf, IM_ID_START),
            im_id_end_id=_token_id(hf, IM_ID_END),
            unk_id=_token_id(hf, UNK),
            newline_id=newline[0],
            bos_id=hf.bos_token_id,
            eos_id=hf.eos_token_id,
            terminator_ids=(_token_id(hf, IM_END_CHAT), _token_id(hf, END_OF_TEXT)),
        )

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; Qwen2 adds no BOS, so none is added here either."""
        # verbose=False: a prompt over the tokenizer's nominal 32k is checked (with advice) by the
        # caller against max_inp_length; transformers' own warning would only precede that error.
        return list(self.hf.encode(text, add_special_tokens=False, verbose=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens kept, as the official answer decoding does."""
        return str(self.hf.decode(list(ids), skip_special_tokens=False))

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """ChatML text for ``messages`` ending with the assistant generation prompt."""
        return str(self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def load_tokenizer(folder: str | Path) -> MiniCPMVTokenizer:
    """Load the tokenizer files of a local checkpoint folder (no remote code, no download)."""
    path = Path(folder)
    if not path.is_dir():
        raise CheckpointError(f"tokenizer folder {path} does not exist")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(f"tokenizer folder {path} has none of {', '.join(_TOKENIZER_FILES)}")
    try:
        hf = Qwen2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"tokenizer files in {path} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    return MiniCPMVTokenizer.from_hf(hf)


def as_minicpmv_tokenizer(tokenizer: MiniCPMVTokenizer | PreTrainedTokenizerBase) -> MiniCPMVTokenizer:
    """Accept either our wrapper or a bare transformers tokenizer (wrapped on the fly)."""
    if isinstance(tokenizer, MiniCPMVTokenizer):
        return tokenizer
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return MiniCPMVTokenizer.from_hf(tokenizer)
    raise TypeError(f"expected a MiniCPMVTokenizer or transformers tokenizer, got {type(tokenizer).__name__}")


def _token_id(hf: PreTrainedTokenizerBase, token: str) -> int:
    token_id: Any = hf.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or hf.convert_ids_to_tokens(token_id) != token:
        raise CheckpointError(f"tokenizer {_name(hf)} has no {token} token")
    return token_id


def _name(hf: PreTrainedTokenizerBase) -> str:
    return str(getattr(hf, "name_or_path", "") or type(hf).__name__)
