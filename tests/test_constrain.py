"""Constrained decoding: token bytes, exact allowed-token masks against brute force, the budget, and generation with a
tiny random model (greedy, beam search, sampling) whose every answer parses and is a span of its context or "?"."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_squad.constrain import AnswerSpec, Field, Grammar, Vocabulary, escape, json_spec, vocabulary_of
from llama_squad.evaluation import ANSWER_PREFIX, Answerer, start_conversation
from llama_squad.generation import GenerationOptions, Generator
from llama_squad.tasks import multiwoz, squad_v2

TOKENIZERS = (
    "smollm2-135m-instruct", "llama-2-7b-chat-hf", "meta-llama-3-8b-instruct", "mistral-7b-instruct-v0.3",
    "phi-3-mini-4k-instruct", "qwen2.5-1.5b-instruct",
)  # fmt: skip
MASKED = ("smollm2-135m-instruct", "llama-2-7b-chat-hf", "meta-llama-3-8b-instruct")  # one per family, + a 128k vocab
CONTEXT = 'Zürich – 東京. Zürich said "no\\go"\nat Zürichsee.'  # repeats, non-ASCII, a quote, a backslash, a newline
STOP = 7  # any id: the tests name it the stop token


@pytest.fixture(scope="module")
def tokenizers(tokenizers_dir):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(tokenizers_dir / name) for name in TOKENIZERS}


def extractive(context: str) -> AnswerSpec:
    return AnswerSpec((Field("answer", source=context, choices=("?",)),))


def run(grammar: Grammar, data: bytes, state=None):
    """The state after ``data`` (None: rejected)."""
    state = grammar.start if state is None else state
    for byte in data:
        state = grammar.step(state, byte)
        if state is None:
            return None
    return state


def brute_force(grammar: Grammar, state) -> set[int]:
    """Every token whose bytes the grammar accepts from ``state``, one by one."""
    if grammar.is_end(state):
        return {STOP}
    return {t for t, b in enumerate(grammar.vocabulary.bytes_of) if b and run(grammar, b, state) is not None}


def token_of(vocabulary, data: bytes) -> int:
    return vocabulary.known[data]


# ---------------------------------------------------------------------------------------------------- token bytes


@pytest.mark.parametrize("name", TOKENIZERS)
def test_token_bytes_spell_what_the_tokenizer_decodes(tokenizers, name):
    tokenizer = tokenizers[name]
    vocabulary = vocabulary_of(tokenizer)
    for text in ('Zürich – 東京 said \'hi\' {"answer": "x\\\\y"}\n\ttabs  and   spaces 🎉 3€', " leading space"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        spelled = b"".join(vocabulary.bytes_of[t] for t in ids)
        decoded = tokenizer.decode(ids).encode("utf-8")
        # SentencePiece decoding drops the space it prepends at the start of a sequence: not a token's byte
        assert spelled == decoded or spelled == b" " + decoded, (spelled, decoded)
    assert all(vocabulary.bytes_of[t] is None for t in tokenizer.all_special_ids)
    assert all(bytes([b]) in vocabulary.known for b in b'{}":, ?0123456789abcdefu\\/')  # every closing byte


# ---------------------------------------------------------------------------------------------------- the automaton


def test_extractive_accepts_exactly_the_spans_of_the_context_or_the_question_mark():
    vocabulary = vocabulary_of_bytes()
    grammar = Grammar(extractive(CONTEXT), vocabulary, [STOP])

    def accepts(answer: str) -> bool:
        state = run(grammar, json.dumps({"answer": answer}, ensure_ascii=False).encode("utf-8"))
        return state is not None and grammar.is_end(state)

    spans = {CONTEXT[i:j] for i in range(len(CONTEXT)) for j in range(i + 1, len(CONTEXT) + 1)}
    assert all(accepts(span) for span in spans)  # mid-word starts ("ürich"), "東京", 'said "no\\go"\nat', ...
    assert accepts("?") and not accepts("") and not accepts("Zürich! ")
    rng = random.Random(0)
    for _ in range(500):  # spans with one character changed are not spans
        span = rng.choice(sorted(spans))
        k = rng.randrange(len(span))
        changed = span[:k] + rng.choice('xZ東é"\\\n') + span[k + 1 :]
        assert accepts(changed) == (changed in spans or changed == "?")
    # a value never ends inside an escape or a character: "\" alone, or the first byte of "ü", then the quote
    assert run(grammar, b'{"answer": "no\\') is not None  # inside the escape of the backslash
    assert run(grammar, b'{"answer": "no\\"') is None  # a quote there neither closes nor follows "no"
    assert grammar.is_end(run(grammar, b'{"answer": "\\"no\\\\go\\""}'))
    assert run(grammar, '{"answer": "Zü'.encode()[:-1] + b'"') is None
    # the raw newline of the context is written as \n; its raw byte is not allowed
    assert run(grammar, b'{"answer": "go\\"\\nat"}') is not None and run(grammar, b'{"answer": "go\\"\nat') is None


def test_json_mode_accepts_json_strings_of_the_asked_keys_in_order():
    grammar = Grammar(json_spec(["area", "name"]), vocabulary_of_bytes(), [STOP])
    for answer in ({"area": "centre", "name": "?"}, {"area": 'a "b" \\ c\n\u00e9\U0001f389', "name": ""}):
        text = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        assert grammar.is_end(run(grammar, text))
        assert grammar.is_end(run(grammar, json.dumps(answer).encode()))  # \uXXXX escapes too
    for bad in (b'{"name": "x", "area": "y"}', b'{"area": "x"}', b'{"area": "\x01"', b'{"area": "\xc3\x28"', b"{}"):
        state = run(grammar, bad)
        assert state is None or not grammar.is_end(state), bad
    assert run(grammar, b' \n{"area": "') is not None and run(grammar, b'   {"') is None  # at most 2 leading spaces


def test_force_answer_starts_the_grammar_after_the_prefix():
    grammar = Grammar(extractive(CONTEXT), vocabulary_of_bytes(), [STOP], prefix=ANSWER_PREFIX)
    assert grammar.is_end(run(grammar, b'ich"}')) and run(grammar, b'{"answer"') is None


def vocabulary_of_bytes() -> Vocabulary:
    """The 256 single bytes and a few longer tokens (id STOP has no bytes): automaton tests need no tokenizer."""
    words = [bytes([b]) for b in range(256)] + [b'"}', "Zürich".encode(), "ür".encode(), b"ich", b'o\\"', b"?"]
    return Vocabulary([None if t == STOP else w for t, w in enumerate(words)])


# ---------------------------------------------------------------------------------------------------- exact masks


def states_to_check(grammar: Grammar, tokens: dict[str, bytes]) -> dict[str, tuple]:
    """Named states of a grammar, reached by bytes."""
    return {name: run(grammar, data) for name, data in tokens.items()}


@pytest.mark.parametrize("name", MASKED)
def test_extractive_masks_equal_brute_force(tokenizers, name):
    tokenizer = tokenizers[name]
    vocabulary = vocabulary_of(tokenizer)
    grammar = Grammar(extractive(CONTEXT), vocabulary, [STOP])
    prefix = b'{"answer": "'
    states = states_to_check(
        grammar,
        {
            "start": b"",
            "value start": prefix,
            "after Z": prefix + b"Z",
            "inside ü": prefix + "Zü".encode()[:-1],
            "mid-word ürich": prefix + "ürich".encode(),
            "inside an escape": prefix + b'\\"no\\',
            "after the escape": prefix + b'\\"no\\\\',
            "before the brace": prefix + b'?"',
            "end": prefix + b'?"}',
        },
    )
    assert all(state is not None for state in states.values())
    for label, state in states.items():
        assert set(grammar.allowed(state, 64).tolist()) == brute_force(grammar, state), label
    # hand-checked: "?" is reachable at the value start; no empty answer; the stop token only after "}"
    at_value = set(grammar.allowed(states["value start"], 64).tolist())
    assert token_of(vocabulary, b"?") in at_value and token_of(vocabulary, b'"') not in at_value
    assert token_of(vocabulary, b"x") not in at_value  # no x in the context
    assert token_of(vocabulary, b"\xc3\xbc"[:1]) in at_value  # a span may start with "ü" (mid-word), byte by byte
    assert set(grammar.allowed(states["end"], 64).tolist()) == {STOP}
    assert STOP not in set(grammar.allowed(states["before the brace"], 64).tolist())
    assert token_of(vocabulary, b"}") in set(grammar.allowed(states["before the brace"], 64).tolist())


@pytest.mark.parametrize("name", MASKED)
def test_json_masks_equal_brute_force(tokenizers, name):
    vocabulary = vocabulary_of(tokenizers[name])
    grammar = Grammar(json_spec(["area", "name"]), vocabulary, [STOP])
    opened = b'{"area": "'
    for data in (opened, opened + b"x\\", opened + b"\\u00", opened + "東".encode()[:-2], opened + b'x"'):
        state = run(grammar, data)
        assert set(grammar.allowed(state, 64).tolist()) == brute_force(grammar, state), data


def test_question_mark_is_reachable_whatever_the_context(tokenizers):
    for name in MASKED:
        vocabulary = vocabulary_of(tokenizers[name])
        for context in ("no question mark here", "x", "東京"):
            grammar = Grammar(extractive(context), vocabulary, [STOP], prefix=ANSWER_PREFIX)
            assert token_of(vocabulary, b"?") in set(grammar.allowed(grammar.start, 64).tolist())
            need = grammar.need(grammar.start)  # the fewest tokens of '?"}': with just those left, it still closes
            assert need <= 3 and token_of(vocabulary, b"?") in set(grammar.allowed(grammar.start, need).tolist())
            for token in grammar.allowed(grammar.start, need).tolist():
                assert grammar.need(grammar.advance(grammar.start, token)) <= need - 1


# ---------------------------------------------------------------------------------------------------- the budget


@pytest.mark.parametrize("spec", [extractive(CONTEXT), json_spec(["area", "book day", "name"])], ids=["span", "json"])
def test_output_closes_within_any_budget(tokenizers, spec):
    """Random allowed tokens until the budget runs out: the output is always a complete object."""
    tokenizer = tokenizers["smollm2-135m-instruct"]
    vocabulary = vocabulary_of(tokenizer)
    grammar = Grammar(spec, vocabulary, [STOP])
    rng = np.random.default_rng(0)
    least = grammar.need(grammar.start)
    for budget in [least, least + 1, least + 3, 40] * 5:
        state, out = grammar.start, b""
        for step in range(budget):
            ids = grammar.allowed(state, budget - step)
            token = int(rng.choice(ids))
            if token == STOP:
                break
            out += vocabulary.bytes_of[token]
            state = grammar.advance(state, token)
        value = json.loads(out)
        assert list(value) == [f.key for f in spec.fields]
        if spec.fields[0].source:
            assert value["answer"] == "?" or value["answer"] in CONTEXT


# ---------------------------------------------------------------------------------------------------- tasks


def test_multiwoz_targets_are_allowed_answers():
    """Every gold target of the 2.2 fixtures fits the json grammar; in extractive mode, each whose values are schema
    values or spans of the lower-cased dialogue."""
    fixtures = Path(__file__).resolve().parent / "fixtures" / "multiwoz22"
    args = multiwoz.Arguments(
        output_dir="unused", train_file=str(fixtures / "train"), validation_file=str(fixtures / "dev"),
        test_file=str(fixtures / "test"), max_length=0, granularity="domain",
    )  # fmt: skip
    examples = [dict(row) for row in multiwoz.build_dataset(args)["test"]]
    vocabulary = vocabulary_of_bytes()
    fitting = 0
    for example in examples:
        target = example["completion"][-1]["content"].encode("utf-8")
        grammar = Grammar(multiwoz.constraint_of(example, "json"), vocabulary, [STOP])
        assert grammar.is_end(run(grammar, target))
        spec = multiwoz.constraint_of(example, "extractive")
        dialogue = multiwoz.dialogue_of(example).lower()
        values = json.loads(target).values()
        expected = all(
            v in f.choices or (f.source is not None and v in dialogue)
            for v, f in zip(values, spec.fields, strict=True)
        )
        state = run(Grammar(spec, vocabulary, [STOP]), target)
        assert (state is not None and state[0] == len(spec.fields) * 2 + 2) == expected, target
        fitting += expected
    assert fitting > len(examples) // 2


def test_squad_constraint_spans_the_context():
    example = {"context": "The river Kell.", "task": "squad_v2"}
    assert squad_v2.constraint_of(example, "none") is None
    assert squad_v2.constraint_of(example, "json") == json_spec(["answer"])
    assert squad_v2.constraint_of(example, "extractive") == extractive("The river Kell.")
    assert escape('"') == b'\\"' and escape("\n") == b"\\n" and escape("ü") == "ü".encode()


# ---------------------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def squad_examples() -> list[dict]:
    contexts = [CONTEXT, "The town of Alder lies on the river Kell.", "Ünïcödé ünder «quotes» and \\ back"]
    records = [
        squad_v2.Record(f"q{i}", "t", context, f"What is {i}?", (), 0) for i, context in enumerate(contexts * 2)
    ]
    dataset = squad_v2.to_dataset(records, "single_turn", "")
    return [dict(row) for row in dataset]


@pytest.mark.parametrize(
    "decoding",
    [dict(), dict(num_beams=2), dict(do_sample=True, top_k=5), dict(force_answer=True)],
    ids=["greedy", "beam", "sample", "force_answer"],
)
def test_every_generated_answer_is_a_span_or_a_question_mark(tiny, decoding):
    model, tokenizer = tiny
    torch.manual_seed(0)
    examples = squad_examples()
    options = GenerationOptions(max_new_tokens=12, constrain="extractive", **decoding)
    conversations = [start_conversation(ex) for ex in examples]
    Answerer(Generator(model, tokenizer, options)).answer(conversations)
    assert all(is_span_answer(c.outputs[0], c.example["context"]) for c in conversations)
    free = [start_conversation(ex) for ex in examples]
    Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=12, **decoding))).answer(free)
    assert not any(is_span_answer(c.outputs[0], c.example["context"]) for c in free)  # what the random model writes


def is_span_answer(output: str, context: str) -> bool:
    """Whether ``output`` is exactly {"answer": a span of ``context`` or "?"}."""
    try:
        value = json.loads(output)
    except ValueError:
        return False
    answer = value.get("answer") if isinstance(value, dict) and list(value) == ["answer"] else None
    # SentencePiece decoding drops a leading space of the first token after a --force_answer prefix
    return isinstance(answer, str) and (answer == "?" or (answer != "" and answer.strip() in context))


def test_test_py_records_the_constraint(tiny_model_dir, tiny_dataset_dir, tmp_path):
    import test as test_script
    from llama_squad.results import read_results
    from llama_squad.summary import summarize_files

    out = tmp_path / "eval"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_dataset_dir), "--output_dir",
            str(out), "--max_new_tokens", "10", "--constrain", "json"]  # fmt: skip
    assert test_script.main(argv) == 0
    results = read_results(out / "results.csv")
    assert results["valid_json"].all() and set(results["constrain"]) == {"json"}
    assert summarize_files([str(out / "results.csv")])["constrain"].tolist() == ["json"]
    assert test_script.main([*argv[:-1], "extractive"]) == 1  # another constraint does not resume these results


def test_the_benchmark_catches_outputs_outside_the_context(monkeypatch):
    """benchmarks/bench_constrained.py's check of `extractive` would fail a run whose answer is not a span."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_constrained.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: its folder (benchmarks/common/) first
    spec = importlib.util.spec_from_file_location("bench_constrained", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    questions = [{"id": i, "context": CONTEXT} for i in range(6)]
    outputs = {
        "0": '{"answer": "Zürich – 東京"}',  # a span
        "1": '{"answer": "?"}',
        "2": '{"answer": "no\\\\go"}',  # the escaped backslash is the context's
        "3": '{"answer": "Zurich"}',  # not a span
        "4": '{"answer": "Zürich"} and more',  # not one JSON object
        "5": '{"answer": "Zürich", "why": "x"}',  # other keys
    }
    assert [v.split(":")[0] for v in bench.extractive_violations(questions, outputs)] == ["3", "4", "5"]
