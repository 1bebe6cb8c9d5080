"""The preallocated key/value cache: the keys, values and answers of transformers' DynamicCache, written in place."""

import os

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from llama_squad.generation import GenerationOptions, Generator, cache_kwarg
from llama_squad.kv_cache import PreallocatedLayer, make_room, preallocated_cache


def states(rows: int, columns: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, 2, columns, 4, generator=generator) for _ in range(2))


def test_the_layer_holds_what_a_dynamic_layer_holds_and_decodes_in_place():
    """Prefill, a shared prefix repeated for several rows, a prompt's own tokens, decoding steps, a crop and a step
    past the room: after each, the same keys and values as DynamicLayer; within the room, no new buffer."""
    reference, layer = DynamicLayer(), PreallocatedLayer(room=0)

    def both(method, *args):
        expected, got = getattr(reference, method)(*args), getattr(layer, method)(*args)
        assert torch.equal(reference.keys, layer.keys) and torch.equal(reference.values, layer.values)
        assert reference.get_seq_length() == layer.get_seq_length()
        if method == "update":
            assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))

    both("update", *states(2, 5, seed=0))  # two distinct prefixes
    layer.room = 3 + 4  # the own tokens and four answer tokens
    both("batch_select_indices", torch.tensor([0, 0, 1, 1, 1]))
    buffer = layer.key_buffer
    assert buffer.shape == (5, 2, 5 + 7, 4)
    both("update", *states(5, 3, seed=1))
    for step in range(4):
        both("update", *states(5, 1, seed=2 + step))
    assert layer.key_buffer is buffer  # all written in place
    both("crop", -2)
    both("update", *states(5, 1, seed=9))
    assert layer.key_buffer is buffer  # the cropped columns are written over
    both("update", *states(5, 3, seed=10))  # past the room: one copy into a bigger buffer
    assert layer.key_buffer is not buffer and layer.get_seq_length() == 5 + 3 + 4 - 2 + 1 + 3


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def test_generate_scores_are_those_of_the_dynamic_cache(tiny):
    """Same tokens and bit-identical scores at every step, whatever the room (none: a copy per step)."""
    model, tokenizer = tiny
    ids = torch.randint(3, model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    kwargs = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    reference = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for room in (0, 6):
        cache = preallocated_cache(model, room)
        out = model.generate(input_ids=ids, attention_mask=mask, **{cache_kwarg(model): cache}, **kwargs)
        assert torch.equal(out.sequences, reference.sequences)
        assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores, strict=True))
        assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)


def test_shared_prefixes_decode_without_copying_the_cache(tiny, monkeypatch):
    """The prefix of a group runs once (a buffer of one row per key and value of each layer), then it is copied into
    each row's buffer with room for the row's own tokens and its answer: no buffer of the group's rows is made while
    generating. Without sharing, one per key and value of each layer, at the prefill."""
    model, tokenizer = tiny
    made = []
    original = PreallocatedLayer.new_buffer

    def new_buffer(cached, states, columns):
        made.append(states.shape[0])
        return original(cached, states, columns)

    monkeypatch.setattr(PreallocatedLayer, "new_buffer", staticmethod(new_buffer))
    shared = list(range(100, 140))
    prompts = [shared + [7], shared + [8, 9], shared + [10, 11, 12]]
    answers = {}
    for share in (True, False):
        generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=5, share_prefix=share))
        made.clear()
        answers[share], _ = generator.generate(prompts, [40, 40, 40])
        assert made == [1 if share else 3] * 2 * model.config.num_hidden_layers
    assert answers[True] == answers[False]


def test_make_room_reaches_only_preallocated_layers(tiny):
    model, _ = tiny
    cache = preallocated_cache(model, 0)
    cache.layers.append(DynamicLayer())
    make_room(cache, 9)
    assert [getattr(layer, "room", None) for layer in cache.layers] == [9] * model.config.num_hidden_layers + [None]


@pytest.mark.parametrize("queries", [1, 20])
def test_grouped_query_attention_gives_the_numbers_of_repeated_heads(queries):
    """What grouped_query_attention_on_cpu relies on: torch's CPU attention with grouped key/value heads and a mask
    gives the same numbers as with the heads repeated (transformers' repeat_kv), bit for bit."""
    from torch.nn.functional import scaled_dot_product_attention as attention

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(4, 9, queries, 64, generator=generator)
    key, value = (torch.randn(4, 3, 300, 64, generator=generator) for _ in range(2))
    mask = torch.ones(4, 1, queries, 300, dtype=torch.bool).tril(300 - queries)
    mask[1, :, :, :50] = False  # a left-padded row
    repeated = attention(query, key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1), attn_mask=mask)
    assert torch.equal(attention(query, key, value, attn_mask=mask, enable_gqa=True), repeated)


def test_grouped_query_attention_is_switched_on_for_cpu_calls_only(monkeypatch):
    from llama_squad.generation import SDPA_GQA_VARIABLE, grouped_query_attention_on_cpu

    monkeypatch.delenv(SDPA_GQA_VARIABLE, raising=False)
    with grouped_query_attention_on_cpu("cpu"):
        assert os.environ[SDPA_GQA_VARIABLE] == "1"
    assert SDPA_GQA_VARIABLE not in os.environ
    with grouped_query_attention_on_cpu("cuda"):
        assert SDPA_GQA_VARIABLE not in os.environ
    monkeypatch.setenv(SDPA_GQA_VARIABLE, "0")  # the user's choice stands
    with grouped_query_attention_on_cpu("cpu"):
        assert os.environ[SDPA_GQA_VARIABLE] == "0"
    assert os.environ[SDPA_GQA_VARIABLE] == "0"
