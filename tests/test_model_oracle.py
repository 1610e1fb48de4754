"""Our MiniCPM-V 2.6 against the golden outputs of the official code (tests/data/oracle, float32 CPU).

Every case of ``expected/cases.json`` runs end to end through the public API (``prepare``, ``logits``,
``generate``/``chat``) on the oracle's tiny checkpoint, loaded with ``MiniCPMV.from_pretrained``.
Tolerances are the oracle README's: ids, bounds, position ids and texts exact; resampler output and
logits within 1e-4; the vision tower within about 1e-5.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.configuration import MiniCPMVConfig
from model.generation import GenerationRequest, generate_ids, generation_kwargs
from model.modeling import MiniCPMV
from model.processing import ProcessorConfig
from model.vision import official_buckets, pieces_to_strips, position_ids
from tests.conftest import DATA_DIR

ORACLE = DATA_DIR / "oracle"
EXPECTED = ORACLE / "expected"
CASES = {c["name"]: c for c in json.loads((EXPECTED / "cases.json").read_text())["cases"]}
# (case name, sample index): batch2 is checked sample by sample, as the oracle README allows.
SAMPLES = [(name, b) for name, c in CASES.items() for b in range(len(c.get("batch", [None])))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> MiniCPMV:
    _RUNS.clear()
    return MiniCPMV.from_pretrained(ORACLE / "tiny_minicpmv26", device="cpu")


@cache
def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(EXPECTED / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def messages(name: str, sample: int) -> list[dict]:
    case = CASES[name]
    raw = case["batch"][sample] if "batch" in case else case["messages"]
    out = []
    for message in raw:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                item if isinstance(item, str) else Image.open(EXPECTED / item["image"]).convert("RGB")
                for item in content
            ]
        out.append({"role": message["role"], "content": content})
    return out


def sample_view(name: str, sample: int) -> tuple[np.ndarray, int, slice]:
    """Prompt ids of one sample (padding removed), its pad length, and its pieces' rows."""
    e = expected(name)
    ids = e["input_ids"][sample]
    pad = int(np.argmax(ids != 0)) if "batch" in CASES[name] else 0
    counts = e["images_per_sample"] if "images_per_sample" in e else np.zeros(1, dtype=np.int64)
    start = int(counts[:sample].sum())
    return ids[pad:], pad, slice(start, start + int(counts[sample]) if counts.size else start)


_RUNS: dict[tuple[str, int], dict] = {}


def result(model: MiniCPMV, name: str, sample: int) -> dict:
    """Prepare, vision and logits of one sample, computed once per module; tests check parts of it."""
    key = (name, sample)
    if key not in _RUNS:
        prep = model.prepare(messages(name, sample), **CASES[name]["chat_kwargs"])
        vision = model.visual_embeddings(prep) if prep.n_pieces else None
        _RUNS[key] = {"prep": prep, "vision": vision, "logits": model.logits(prep, vision)}
    return _RUNS[key]


@pytest.mark.parametrize("name,sample", SAMPLES)
def test_prompt_ids_bounds_and_pieces_are_exact(model: MiniCPMV, name: str, sample: int) -> None:
    e = expected(name)
    ids, pad, rows = sample_view(name, sample)
    prep = result(model, name, sample)["prep"]
    assert prep.prompt_text == str(e["final_prompt_text"][sample])
    np.testing.assert_array_equal(prep.input_ids.numpy(), ids)
    bound_key = f"image_bound_{sample}"
    np.testing.assert_array_equal(prep.image_bound.numpy().reshape(-1, 2), e[bound_key].reshape(-1, 2) - pad)
    if prep.n_pieces:
        np.testing.assert_array_equal(prep.tgt_sizes.numpy(), e["tgt_sizes"][rows])
        digests = [hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest() for p in prep.pieces]
        assert digests == [str(d) for d in e["piece_sha256"][rows]]


@pytest.mark.parametrize("name", [n for n in CASES if "vpm_position_ids" in expected(n)])
def test_vision_position_ids_are_exact(name: str) -> None:
    e = expected(name)
    stored = e["vpm_position_ids"]
    sizes = [tuple(int(v) for v in hw) for hw in e["tgt_sizes"]]
    ours = position_ids(sizes, stored.shape[1], 70)
    np.testing.assert_array_equal(ours.numpy(), stored)


def test_position_buckets_match_the_official_table_for_every_side_length() -> None:
    table = np.load(EXPECTED / "position_bucket_table.npz")["official_arange"]
    for n in range(1, 257):
        assert list(official_buckets(n, 70)) == table[n - 1, :n].tolist(), n
        assert (table[n - 1, n:] == -1).all()


@pytest.mark.parametrize("name", ["img_448x448", "img_686x292"])
def test_vision_tower_output(model: MiniCPMV, name: str) -> None:
    """img_686x292 is 49 patches wide: the stock transformers bucketing would be off by up to 3.9 here."""
    e = expected(name)
    prep = result(model, name, 0)["prep"]
    pixels = [model._normalise(p) for p in prep.pieces]
    with torch.inference_mode():
        hidden = model.vpm(pieces_to_strips(pixels, 14), [tuple(s) for s in prep.tgt_sizes.tolist()])
    torch.testing.assert_close(hidden, torch.from_numpy(e["vpm_last_hidden_state"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,sample", [s for s in SAMPLES if s[0] != "text_only"])
def test_resampler_output(model: MiniCPMV, name: str, sample: int) -> None:
    _, _, rows = sample_view(name, sample)
    vision = result(model, name, sample)["vision"]
    reference = torch.from_numpy(expected(name)["vision_embeddings"][rows])
    torch.testing.assert_close(vision, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,sample", SAMPLES)
def test_logits(model: MiniCPMV, name: str, sample: int) -> None:
    e = expected(name)
    _, pad, _ = sample_view(name, sample)
    logits = result(model, name, sample)["logits"]
    torch.testing.assert_close(logits[-1], torch.from_numpy(e["logits_last"][sample]), atol=1e-4, rtol=0)
    if "logits_all" in e:
        torch.testing.assert_close(logits, torch.from_numpy(e["logits_all"][sample]), atol=1e-4, rtol=0)
    else:
        rows = e["logits_rows"] - pad
        keep = rows >= 0  # batch2: rows inside the other sample's padding have no counterpart
        assert keep.sum() > 10
        reference = torch.from_numpy(e["logits_at_rows"][sample][keep])
        torch.testing.assert_close(logits[torch.from_numpy(rows[keep])], reference, atol=1e-4, rtol=0)


def _ids(row: np.ndarray) -> list[int]:
    return [int(i) for i in row]


@pytest.mark.parametrize("name,sample", SAMPLES)
def test_generation_ids_and_texts(model: MiniCPMV, name: str, sample: int) -> None:
    """The oracle's three decodings: greedy, greedy with min_new_tokens=8, and the default beam search.

    The prompt is embedded once and the three settings reuse it (``chat`` = prepare, this, decode).
    """
    e = expected(name)
    run = result(model, name, sample)
    embeds, mask = model.embed([run["prep"]], [run["vision"]])
    request = GenerationRequest(
        inputs_embeds=embeds,
        attention_mask=mask,
        eos_token_ids=model.tokenizer.terminator_ids,
        max_new_tokens=8,
        kwargs=generation_kwargs(False, 0, {}),
    )
    greedy_kwargs = generation_kwargs(False, 0, {"num_beams": 1, "repetition_penalty": 1.0})
    greedy = generate_ids(model.llm, replace(request, kwargs=greedy_kwargs))
    assert _ids(greedy[0]) == _ids(e["greedy_ids"][sample])
    assert model.decode(greedy[0].tolist()) == str(e["greedy_text"][sample])
    forced_kwargs = generation_kwargs(False, 8, {"num_beams": 1, "repetition_penalty": 1.0})
    forced = generate_ids(model.llm, replace(request, kwargs=forced_kwargs))
    assert _ids(forced[0]) == _ids(e["greedy8_noeos_ids"][sample])
    beam = generate_ids(model.llm, request)
    assert _ids(beam[0]) == _ids(e["beam3_ids"][sample])
    assert model.decode(beam[0].tolist()) == str(e["beam3_text"][sample])


@pytest.mark.parametrize("name", ["img_300x1200", "multi_2img", "text_only"])  # 300x1200 stops early
def test_chat_end_to_end(model: MiniCPMV, name: str) -> None:
    """``chat`` itself, from PIL images to text, with the oracle's chat kwargs."""
    e = expected(name)
    msgs = messages(name, 0)
    kwargs = CASES[name]["chat_kwargs"]
    greedy = model.chat(msgs, sampling=False, max_new_tokens=8, num_beams=1, repetition_penalty=1.0, **kwargs)
    assert greedy == str(e["greedy_text"][0])
    assert model.chat(msgs, sampling=False, max_new_tokens=8, **kwargs) == str(e["beam3_text"][0])


def test_batched_chat_matches_the_official_batch(model: MiniCPMV) -> None:
    """batch2 as one left-padded batch: both samples' greedy and beam texts, as the official batch gave."""
    e = expected("batch2")
    batch = [messages("batch2", 0), messages("batch2", 1)]
    greedy = model.chat(batch, sampling=False, max_new_tokens=8, num_beams=1, repetition_penalty=1.0)
    assert greedy == [str(t) for t in e["greedy_text"]]
    assert model.chat(batch, sampling=False, max_new_tokens=8) == [str(t) for t in e["beam3_text"]]
    preps = [model.prepare(m) for m in batch]
    embeds, mask = model.embed(preps)
    np.testing.assert_array_equal(mask.numpy(), e["attention_mask"].astype(np.int64))


def test_vision_runs_in_chunks_of_vision_batch_size(model: MiniCPMV) -> None:
    """video_8f has 24 pieces and the official code ran the tower twice (16 + 8); so does encode_pieces.

    Small pieces keep this fast; the order of the outputs must follow the input order.
    """
    assert int(expected("video_8f")["vpm_num_calls"]) == 2
    rng = np.random.default_rng(0)
    sizes = [(28 + 14 * (i % 3), 42) for i in range(24)]
    pieces = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    calls: list[int] = []
    handle = model.vpm.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
    try:
        batched = model.encode_pieces(pieces)
    finally:
        handle.remove()
    assert sorted(calls) == [8, 16]
    for i in (0, 1, 23):
        torch.testing.assert_close(batched[i : i + 1], model.encode_pieces([pieces[i]]), atol=1e-5, rtol=0)


def test_full_size_config_has_exactly_the_real_parameter_names_and_shapes() -> None:
    reference = json.loads((EXPECTED / "full_size_param_shapes.json").read_text())
    config = MiniCPMVConfig.from_dict(reference["config"])
    assert config == MiniCPMVConfig.full_size()
    with torch.device("meta"):
        skeleton = MiniCPMV(config, tokenizer=None, processor_config=ProcessorConfig())
    shapes = {name: list(p.shape) for name, p in skeleton.named_parameters()}
    assert shapes == reference["param_shapes"]
    assert len(shapes) == 789
    for prefix, count in reference["param_counts"].items():
        assert sum(p.numel() for n, p in skeleton.named_parameters() if n.startswith(prefix)) == count
    assert set(skeleton.state_dict()) == set(shapes)  # no persistent buffers beyond the checkpoint's


def test_the_oracle_checkpoint_loads_bit_exactly(model: MiniCPMV) -> None:
    from safetensors.torch import load_file

    stored = load_file(str(Path(ORACLE / "tiny_minicpmv26" / "model.safetensors")))
    state = model.state_dict()
    assert set(state) == set(stored)
    assert all(torch.equal(state[k], v) for k, v in stored.items())
