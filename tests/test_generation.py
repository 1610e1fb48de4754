"""model/generation.py's KV caches for decoding: the reserved cache (room for the tokens to come, no
copy per step) and the ragged prefill of a batch (each prompt alone, then one left-padded cache), on
the tiny model: the same tokens as transformers' own dynamic cache and padded batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import DynamicCache

from model.generation import GenerationRequest, ReservedLayer, ragged_prefill, run_generate
from model.modeling import MiniCPMV
from model.tiny import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.05}


@pytest.fixture(scope="module")
def tiny() -> MiniCPMV:
    return build_tiny_model()


def request(model: MiniCPMV, texts: list[str], max_new_tokens: int = 12) -> GenerationRequest:
    preps = [model.prepare([{"role": "user", "content": t}]) for t in texts]
    return replace(model.generation_request(preps, False, max_new_tokens), kwargs=GREEDY)


def test_a_reserved_layer_holds_what_concatenation_holds_also_past_its_reserve() -> None:
    reserved = ReservedLayer(reserve=2)
    grown = torch.empty((2, 3, 0, 4))
    for step, length in enumerate((5, 1, 1, 1, 3, 1)):  # the prefill, then tokens: past 2 reallocates
        keys = torch.full((2, 3, length, 4), float(step))
        grown = torch.cat([grown, keys], dim=-2)
        got_keys, got_values = reserved.update(keys, -keys)
        assert torch.equal(got_keys, grown) and torch.equal(got_values, -grown)
        assert reserved.get_seq_length() == grown.shape[-2]


def test_decoding_into_reserved_room_gives_the_dynamic_cache_s_tokens(tiny: MiniCPMV) -> None:
    one = request(tiny, ["Tell me about the sea."], max_new_tokens=20)
    reserved = run_generate(tiny.llm, one.call_kwargs())
    dynamic = run_generate(tiny.llm, {**one.call_kwargs(), "cache": DynamicCache()})
    assert torch.equal(reserved, dynamic) and reserved.shape[1] > 1


def test_a_ragged_prefill_gives_each_row_the_tokens_it_gets_alone(tiny: MiniCPMV) -> None:
    texts = [
        "Hi",
        # "!" is the pad id: masked inside the prompt too, as the official code does
        "Wait! Stop! What happened to the red car that was parked outside the house yesterday?",
        "Describe a long, quiet street at night in one sentence, please.",
    ]
    batch = request(tiny, texts)
    ragged = run_generate(tiny.llm, batch.call_kwargs(ragged_prefill(tiny.llm, batch)))
    padded = run_generate(tiny.llm, {**batch.call_kwargs(), "cache": DynamicCache()})  # transformers' own
    for row, text in enumerate(texts):
        alone = run_generate(tiny.llm, request(tiny, [text]).call_kwargs())[0]
        assert ragged[row, : len(alone)].tolist() == alone.tolist()
    assert torch.equal(ragged, padded)
    assert len({tuple(r.tolist()) for r in ragged}) == 3


def test_beam_search_is_not_given_a_prefilled_cache(tiny: MiniCPMV) -> None:
    batch = request(tiny, ["a", "bb"])
    beams = replace(batch, kwargs={"num_beams": 3})
    assert "cache" not in beams.call_kwargs()
    with pytest.raises(ValueError, match="beam search"):
        beams.call_kwargs(ragged_prefill(tiny.llm, batch))
