"""Processing against the official outputs: slicing, pieces, chat text, placeholders, ids, bounds, decoding.

Every oracle fact checked here is "Exact" in tests/data/oracle/README.md; the expected values are read
from the oracle files, never written into this test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from model.errors import CheckpointError, ConfigMismatchError, PromptTooLongError
from model.image_slicing import (
    ImageLayout,
    SlicedImage,
    ensure_divide,
    find_best_resize,
    get_sliced_grid,
)
from model.processing import (
    IMAGE_MARKER,
    Prepared,
    ProcessorConfig,
    build_chat_text,
    decode_answer,
    image_placeholder,
    pieces_to_pixel_values,
    prepare,
    slice_image,
    to_strip,
)
from model.tokenizer import MiniCPMVTokenizer, load_tokenizer

ORACLE = Path(__file__).resolve().parent / "data" / "oracle"
TINY = ORACLE / "tiny_minicpmv26"
EXPECTED = ORACLE / "expected"
CASES = json.loads((EXPECTED / "cases.json").read_text())["cases"]
CASE_NAMES = [case["name"] for case in CASES]


@pytest.fixture(scope="module")
def tok() -> MiniCPMVTokenizer:
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def cfg() -> ProcessorConfig:
    return ProcessorConfig.from_folder(TINY)


_image_cache: dict[str, PIL.Image.Image] = {}


def _image(relative: str) -> PIL.Image.Image:
    if relative not in _image_cache:
        _image_cache[relative] = PIL.Image.open(EXPECTED / relative).convert("RGB")
    return _image_cache[relative]


def _messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The README's recipe: strings stay, ``{"image": path}`` becomes the RGB PIL image."""
    out = []
    for message in raw:
        content = message["content"]
        if isinstance(content, list):
            content = [item if isinstance(item, str) else _image(item["image"]) for item in content]
        out.append({"role": message["role"], "content": content})
    return out


def _samples(case: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return case["batch"] if "batch" in case else [case["messages"]]


@pytest.fixture(scope="module")
def prepared(tok: MiniCPMVTokenizer, cfg: ProcessorConfig) -> dict[str, list[Prepared]]:
    return {
        case["name"]: [prepare(_messages(s), tok, cfg, **case["chat_kwargs"]) for s in _samples(case)]
        for case in CASES
    }


def _sliced(preps: list[Prepared]) -> list[SlicedImage]:
    images = [image for p in preps for image in p.images]
    assert all(isinstance(image, SlicedImage) for image in images)
    return images  # type: ignore[return-value]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_slicing_decisions_and_pieces_match_oracle(name: str, prepared: dict[str, list[Prepared]]) -> None:
    golden = np.load(EXPECTED / f"{name}.npz")
    preps = prepared[name]
    images = _sliced(preps)
    n_img = len(images)

    grids = [image.grid or (-1, -1) for image in images]
    assert np.array_equal(
        np.array(grids, dtype=np.int64).reshape(n_img, 2), golden["grid_cols_rows"].reshape(n_img, 2)
    )
    sources = [(image.pieces[0].shape[1], image.pieces[0].shape[0]) for image in images]
    assert np.array_equal(np.array(sources).reshape(n_img, 2), golden["source_sizes_wh"].reshape(n_img, 2))
    assert [image.original_size for image in images] == [
        tuple(s) for s in golden["orig_sizes_wh"].reshape(n_img, 2)
    ]
    assert [len(image.pieces) - 1 for image in images] == golden["n_slices_per_image"].tolist()
    assert [p.n_pieces for p in preps] == golden["images_per_sample"].tolist()

    tgt = torch.cat([p.tgt_sizes for p in preps])
    assert tgt.tolist() == golden["tgt_sizes"].reshape(-1, 2).tolist()
    pieces = [piece for p in preps for piece in p.pieces]
    assert [list(piece.shape) for piece in pieces] == golden["piece_shapes"].reshape(-1, 3).tolist()
    assert all(piece.dtype == np.uint8 for piece in pieces)
    digests = [hashlib.sha256(np.ascontiguousarray(piece).tobytes()).hexdigest() for piece in pieces]
    assert digests == [str(d) for d in golden["piece_sha256"]]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_text_ids_and_bounds_match_oracle(name: str, prepared: dict[str, list[Prepared]]) -> None:
    golden = np.load(EXPECTED / f"{name}.npz")
    for b, prep in enumerate(prepared[name]):
        assert prep.chat_text == str(golden["chat_template_text"][b])
        assert prep.prompt_text == str(golden["final_prompt_text"][b])
        row = golden["input_ids"][b]
        pad = int(np.argmax(row != 0))  # batch2 left-pads with id 0; no prompt here starts with "!"
        assert prep.input_ids.dtype == torch.long
        assert prep.input_ids.tolist() == row[pad:].tolist()
        expected_bound = golden[f"image_bound_{b}"].reshape(-1, 2) - pad
        assert prep.image_bound.tolist() == expected_bound.tolist()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_decode_answer_matches_official_text(name: str, tok: MiniCPMVTokenizer) -> None:
    golden = np.load(EXPECTED / f"{name}.npz")
    for b in range(golden["greedy_ids"].shape[0]):
        assert decode_answer(golden["greedy_ids"][b].tolist(), tok) == str(golden["greedy_text"][b])
        assert decode_answer(torch.from_numpy(golden["beam3_ids"][b]), tok) == str(golden["beam3_text"][b])


def test_decode_answer_drops_pad_bos_and_one_terminator(tok: MiniCPMVTokenizer) -> None:
    body = tok.encode(" hi there ")
    ids = [tok.bos_id, *body[:1], 0, *body[1:], tok.terminator_ids[1]]
    assert decode_answer(ids, tok) == "hi there"
    # Only the last terminator goes; one in the middle stays as text (official behaviour).
    assert decode_answer([*body, tok.eos_id, tok.eos_id], tok) == "hi there <|im_end|>"
    assert decode_answer([], tok) == ""


# MODEL_SPEC §6 worked examples: (w, h), max_slice_nums, grid, source (w, h), tile (w, h), tgt_sizes.
WORKED = [
    ((448, 448), 9, None, (448, 448), None, [(32, 32)]),
    ((64, 64), 9, None, (448, 448), None, [(32, 32)]),
    ((686, 292), 9, None, (686, 294), None, [(21, 49)]),
    ((1344, 756), 9, (3, 2), (602, 336), (490, 406), [(24, 43)] + 6 * [(29, 35)]),
    ((300, 1200), 9, (1, 3), (224, 896), (392, 518), [(64, 16)] + 3 * [(37, 28)]),
    ((2000, 1500), 9, (3, 3), (518, 392), (518, 392), 10 * [(28, 37)]),
    ((1920, 1080), 9, (4, 2), (602, 336), (420, 476), [(24, 43)] + 8 * [(34, 30)]),
    ((640, 360), 2, (2, 1), (602, 336), (420, 476), [(24, 43)] + 2 * [(34, 30)]),
    ((720, 1280), 2, (1, 2), (336, 602), (476, 420), [(43, 24)] + 2 * [(30, 34)]),
]


@pytest.mark.parametrize(("size", "limit", "grid", "source", "tile", "tgt"), WORKED)
def test_model_spec_worked_examples(
    size: tuple[int, int],
    limit: int,
    grid: tuple[int, int] | None,
    source: tuple[int, int],
    tile: tuple[int, int] | None,
    tgt: list[tuple[int, int]],
    cfg: ProcessorConfig,
) -> None:
    sliced = slice_image(PIL.Image.new("RGB", size, (10, 200, 30)), cfg, max_slice_nums=limit)
    assert sliced.grid == grid
    assert sliced.original_size == size
    assert sliced.pieces[0].shape == (source[1], source[0], 3)
    n_tiles = 0 if grid is None else grid[0] * grid[1]
    assert len(sliced.pieces) == 1 + n_tiles
    if tile is not None:
        assert {p.shape for p in sliced.pieces[1:]} == {(tile[1], tile[0], 3)}
    assert sliced.tgt_sizes == tgt


def test_ensure_divide_rounds_half_to_even() -> None:
    assert ensure_divide(35, 14) == 28  # 2.5 -> 2; C's round would give 42
    assert ensure_divide(49, 14) == 56  # 3.5 -> 4
    assert ensure_divide(5, 14) == 14  # never below one patch
    assert ensure_divide(685.97, 14) == 686


def test_find_best_resize_truncates_and_upscales_only_when_asked() -> None:
    assert find_best_resize((64, 64), 448, 14) == (70, 70)
    assert find_best_resize((64, 64), 448, 14, allow_upscale=True) == (448, 448)
    # int(448 / sqrt(686/292)) = 292, then int(292 * 686/292) truncates 685.99.. to 685 -> 686.
    assert find_best_resize((686, 292), 448, 14, allow_upscale=True) == (686, 294)


def test_sliced_grid_respects_the_limit_and_ties() -> None:
    assert get_sliced_grid((448, 448), 9, 448) is None
    assert get_sliced_grid((449, 448), 9, 448) == (2, 1)  # area just over: 2 tiles, wide
    assert get_sliced_grid((1920, 1080), 1, 448) is None
    assert get_sliced_grid((4000, 4000), 9, 448) == (3, 3)


def test_slice_mode_off_never_slices(cfg: ProcessorConfig) -> None:
    off = ProcessorConfig(slice_mode=False)
    sliced = slice_image(PIL.Image.new("RGB", (1920, 1080)), off)
    assert sliced.grid is None and sliced.tgt_sizes == [(24, 43)] and len(sliced.pieces) == 1
    assert slice_image(PIL.Image.new("RGB", (1920, 1080)), cfg, max_slice_nums=1).tgt_sizes == [(24, 43)]


def test_non_rgb_images_are_converted(cfg: ProcessorConfig) -> None:
    gray = slice_image(PIL.Image.new("L", (300, 200), 77), cfg)
    assert gray.pieces[0].shape[2] == 3 and int(gray.pieces[0][0, 0, 0]) == 77


def test_pixel_values_are_the_official_float32_formula(prepared: dict[str, list[Prepared]]) -> None:
    pieces = prepared["img_1344x756"][0].pieces[:2]
    values = pieces_to_pixel_values(pieces)
    for piece, x in zip(pieces, values, strict=True):
        ref = (piece.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
        assert x.dtype == torch.float32 and x.shape == (3, *piece.shape[:2])
        assert torch.equal(x, torch.from_numpy(ref.transpose(2, 0, 1).copy()))
    bf16 = pieces_to_pixel_values(pieces, torch.bfloat16)
    assert all(torch.equal(b, v.to(torch.bfloat16)) for b, v in zip(bf16, values, strict=True))
    with pytest.raises(ValueError, match="uint8"):
        pieces_to_pixel_values([pieces[0].astype(np.float32)])


def test_strip_layout_matches_the_oracle_description(prepared: dict[str, list[Prepared]]) -> None:
    piece = prepared["img_686x292"][0].pieces[0]  # 21 x 49 patches
    chw = pieces_to_pixel_values([piece])[0]
    strip = to_strip(chw)
    rows, cols = piece.shape[0] // 14, piece.shape[1] // 14
    assert strip.shape == (3, 14, rows * cols * 14)
    for r in range(rows):
        for c in range(cols):
            n = r * cols + c
            patch = chw[:, r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14]
            assert torch.equal(strip[:, :, n * 14 : n * 14 + 14], patch)


def test_layout_only_images_give_the_same_prompt(
    tok: MiniCPMVTokenizer, cfg: ProcessorConfig, prepared: dict[str, list[Prepared]]
) -> None:
    """Cached frame embeddings stand in for frames: ids and bounds depend on the layout alone."""
    case = next(c for c in CASES if c["name"] == "video_8f")
    from_pixels = prepared["video_8f"][0]
    content: list[Any] = []
    for index, image in enumerate(from_pixels.images):
        # odd frames as bare layouts (embedding-only), even frames as pre-sliced images with pixels
        content.append(image.layout if index % 2 else image)
    content.append(case["messages"][0]["content"][-1])
    mixed = prepare([{"role": "user", "content": content}], tok, cfg, **case["chat_kwargs"])
    assert torch.equal(mixed.input_ids, from_pixels.input_ids)
    assert torch.equal(mixed.image_bound, from_pixels.image_bound)
    assert torch.equal(mixed.tgt_sizes, from_pixels.tgt_sizes)
    assert mixed.piece_spans == [(3 * i, 3 * i + 3) for i in range(8)]
    assert len(mixed.pieces) == 4 * 3
    assert isinstance(mixed.images[1], ImageLayout)


def test_image_placeholder_layout(tok: MiniCPMVTokenizer) -> None:
    layout = ImageLayout(grid=(2, 2), tgt_sizes=((1, 1),) * 5)
    text = image_placeholder(layout, 3, True, tok, query_num=2)
    unk = "<unk><unk>"
    tile = f"<slice>{unk}</slice>"
    assert text == f"<image_id>3</image_id><image>{unk}</image>{tile}{tile}\n{tile}{tile}"
    assert (
        image_placeholder(ImageLayout(None, ((2, 2),)), 0, False, tok, query_num=1) == "<image><unk></image>"
    )
    with pytest.raises(ValueError, match="needs 5 tgt_sizes"):
        ImageLayout(grid=(2, 2), tgt_sizes=((1, 1),))


def test_system_prompt_and_multi_turn(tok: MiniCPMVTokenizer, cfg: ProcessorConfig) -> None:
    image = PIL.Image.new("RGB", (100, 100))
    msgs = [
        {"role": "user", "content": [image, "what?"]},
        {"role": "assistant", "content": "a square"},
        {"role": "user", "content": ["and this?", image]},
    ]
    text, images = build_chat_text(msgs, tok, system_prompt="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{IMAGE_MARKER}\nwhat?<|im_end|>\n"
        "<|im_start|>assistant\na square<|im_end|>\n"
        f"<|im_start|>user\nand this?\n{IMAGE_MARKER}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert images == [image, image]
    prep = prepare(msgs, tok, cfg, system_prompt="Be brief.")
    assert "<image_id>0</image_id>" in prep.prompt_text and "<image_id>1</image_id>" in prep.prompt_text
    assert prep.image_bound.shape == (2, 2)
    assert (prep.input_ids[prep.image_bound[1, 0] : prep.image_bound[1, 1]] == tok.unk_id).all()


def test_msgs_as_json_string(
    tok: MiniCPMVTokenizer, cfg: ProcessorConfig, prepared: dict[str, list[Prepared]]
) -> None:
    case = next(c for c in CASES if c["name"] == "text_only")
    prep = prepare(json.dumps(case["messages"]), tok, cfg)
    assert torch.equal(prep.input_ids, prepared["text_only"][0].input_ids)
    assert prep.image_bound.shape == (0, 2) and prep.tgt_sizes.shape == (0, 2) and prep.pieces == []


@pytest.mark.parametrize(
    ("msgs", "match"),
    [
        ([], "non-empty list"),
        ("{not json", "not valid JSON"),
        ([[{"role": "user", "content": "hi"}]], "batch"),
        ([{"role": "assistant", "content": "hi"}], r"msgs\[0\].*first message"),
        ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}], r"msgs\[1\].*'system'"),
        ([{"role": "user"}], r"msgs\[0\] must be a dict with 'role' and 'content'"),
        ([{"role": "user", "content": 5}], r"msgs\[0\] content must be a string or a list"),
        ([{"role": "user", "content": ["hi", 3.5]}], r"msgs\[0\] content\[1\] is float"),
        ([{"role": "user", "content": ["look (<image>./</image>)"]}], r"msgs\[0\] content\[0\].*reserved"),
    ],
)
def test_bad_messages_are_rejected_clearly(
    msgs: Any, match: str, tok: MiniCPMVTokenizer, cfg: ProcessorConfig
) -> None:
    with pytest.raises(ValueError, match=match):
        prepare(msgs, tok, cfg)


def test_prompt_too_long_says_what_to_lower(tok: MiniCPMVTokenizer, cfg: ProcessorConfig) -> None:
    frames = [PIL.Image.new("RGB", (640, 360), (i, 0, 0)) for i in range(64)]
    msgs = [{"role": "user", "content": [*frames, "Describe the video."]}]
    with pytest.raises(PromptTooLongError) as info:
        prepare(msgs, tok, cfg, use_image_id=False, max_slice_nums=2)
    message = str(info.value)
    assert "max_inp_length=8192" in message and "64 images in 192 pieces" in message
    assert "fewer frames" in message and "max_slice_nums=1" in message and "raise max_inp_length" in message
    # Without truncation the long prompt is whole: every frame keeps its three 64-token spans.
    prep = prepare(msgs, tok, cfg, use_image_id=False, max_slice_nums=2, max_inp_length=16384)
    assert prep.image_bound.shape == (192, 2) and prep.input_ids.numel() > 12288
    assert prepare(msgs, tok, cfg, use_image_id=False, max_slice_nums=1).image_bound.shape == (64, 2)
    at_limit = prep.input_ids.numel()
    sliced = [{"role": "user", "content": [*prep.images, "Describe the video."]}]  # skip re-slicing
    assert torch.equal(
        prepare(sliced, tok, cfg, use_image_id=False, max_inp_length=at_limit).input_ids, prep.input_ids
    )
    with pytest.raises(PromptTooLongError, match=f"prompt is {at_limit} tokens"):
        prepare(sliced, tok, cfg, use_image_id=False, max_inp_length=at_limit - 1)


def _write_checkpoint(folder: Path, pre: dict[str, Any], config: dict[str, Any] | None) -> Path:
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_processor_config_reads_the_tiny_checkpoint(cfg: ProcessorConfig) -> None:
    assert cfg == ProcessorConfig()  # the tiny checkpoint holds the real 2.6 processor settings


def test_processor_config_is_strict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pre = json.loads((TINY / "preprocessor_config.json").read_text())
    config = json.loads((TINY / "config.json").read_text())
    config["slice_config"]["max_slice_nums"] = 4
    with pytest.raises(ConfigMismatchError, match=r"max_slice_nums=9 .* slice_config.max_slice_nums=4"):
        ProcessorConfig.from_folder(_write_checkpoint(tmp_path, pre, config))
    # A setting only config.json holds is taken from it.
    del pre["max_slice_nums"]
    assert ProcessorConfig.from_folder(_write_checkpoint(tmp_path, pre, config)).max_slice_nums == 4
    # A key a later checkpoint revision may add is named in a warning, not fatal.
    with caplog.at_level("WARNING", logger="model.processing"):
        assert (
            ProcessorConfig.from_folder(_write_checkpoint(tmp_path, {**pre, "colour": 1}, None)).patch_size
            == 14
        )
    assert "ignoring keys this processor does not use: ['colour']" in caplog.text
    with pytest.raises(CheckpointError, match="unk="):
        ProcessorConfig.from_folder(_write_checkpoint(tmp_path, {**pre, "unk": "<pad>"}, None))
    with pytest.raises(CheckpointError, match="version 2.5, not 2.6"):
        ProcessorConfig.from_folder(_write_checkpoint(tmp_path, {**pre, "version": 2.5}, None))
    with pytest.raises(CheckpointError, match="patch_size must be a positive int"):
        ProcessorConfig.from_folder(_write_checkpoint(tmp_path, {**pre, "patch_size": 0}, {}))
    with pytest.raises(CheckpointError, match="preprocessor_config.json is missing"):
        ProcessorConfig.from_folder(tmp_path / "nowhere")
