"""Answer-only labels on six real chat templates: exact supervised text, and the inference prompt as the prefix."""

import logging
import types

import pytest

from llama_squad import IGNORE_INDEX
from llama_squad.tokenization import end_of_turn_token_id, tokenize_conversation, tokenize_dataset, tokenize_prompt

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Capital?"}
ANSWER = {"role": "assistant", "content": '{"answer": "France"}'}
MULTI_TURN = [
    {"role": "assistant", "content": "yes"},
    {"role": "user", "content": "Span?"},
    {"role": "assistant", "content": "France"},
    {"role": "user", "content": "JSON?"},
    {"role": "assistant", "content": '{"answer": "France"}'},
]

# Per template: the end-of-turn token, the text the model writes after the inference prompt (raw: Llama-2 and Mistral
# open with a space), the supervised tokens, and the supervised spans of the multi-turn example, decoded.
TEMPLATES = {
    "smollm2-135m-instruct": (
        "<|im_end|>",
        '{"answer": "France"}<|im_end|>',
        ['{"', "answer", '":', 'Ġ"', "France", '"}', "<|im_end|>"],
        ["yes<|im_end|>", "France<|im_end|>", '{"answer": "France"}<|im_end|>'],
    ),
    "llama-2-7b-chat-hf": (
        "</s>",
        ' {"answer": "France"} </s>',
        ['▁{"', "answer", '":', '▁"', "France", '"}', "▁", "</s>"],
        ["yes </s>", "France </s>", '{"answer": "France"} </s>'],
    ),
    "meta-llama-3-8b-instruct": (
        "<|eot_id|>",
        '{"answer": "France"}<|eot_id|>',
        ['{"', "answer", '":', 'Ġ"', "France", '"}', "<|eot_id|>"],
        ["yes<|eot_id|>", "France<|eot_id|>", '{"answer": "France"}<|eot_id|>'],
    ),
    "qwen2.5-1.5b-instruct": (
        "<|im_end|>",
        '{"answer": "France"}<|im_end|>',
        ['{"', "answer", '":', 'Ġ"', "France", '"}', "<|im_end|>"],
        ["yes<|im_end|>", "France<|im_end|>", '{"answer": "France"}<|im_end|>'],
    ),
    "phi-3-mini-4k-instruct": (
        "<|end|>",
        '{"answer": "France"}<|end|>',
        ['{"', "answer", '":', '▁"', "France", '"}', "<|end|>"],
        ["yes<|end|>", "France<|end|>", '{"answer": "France"}<|end|>'],
    ),
    "mistral-7b-instruct-v0.3": (
        "</s>",
        ' {"answer": "France"}</s>',
        ['▁{"', "answer", '":', '▁"', "Fr", "ance", '"}', "</s>"],
        ["yes</s>", "France</s>", '{"answer": "France"}</s>'],
    ),
}


@pytest.fixture(scope="session")
def load(tokenizers_dir):
    from transformers import AutoTokenizer

    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(tokenizers_dir / name)
        return cache[name]

    return load


def supervised(example: dict) -> list[int]:
    return [i for i, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]


def supervised_runs(tokenizer, example: dict) -> list[str]:
    """Each maximal run of supervised tokens, decoded."""
    runs, run = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs + ([tokenizer.decode(run)] if run else [])


@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no_system"])
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_answer_and_its_end_of_turn_token_follow_the_inference_prompt(load, name, with_system):
    tokenizer = load(name)
    eot, written, tokens, _ = TEMPLATES[name]
    prompt = [SYSTEM, USER] if with_system else [USER]
    example = tokenize_conversation(tokenizer, prompt, [ANSWER])
    prompt_ids = tokenize_prompt(tokenizer, prompt)
    n = len(prompt_ids)

    # The inference prompt, as generation feeds it, is exactly the start of the training ids.
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert prompt_ids == tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    assert (
        prompt_ids == tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    )
    assert example["input_ids"][:n] == prompt_ids
    # Supervised: exactly what follows it, the answer and the end-of-turn token, where the sequence ends.
    assert example["labels"][:n] == [IGNORE_INDEX] * n
    assert example["labels"][n:] == example["input_ids"][n:]
    assert tokenizer.convert_ids_to_tokens(supervised(example)) == tokens
    assert tokenizer.decode(supervised(example)) == written.lstrip(" ")
    assert example["input_ids"][-1] == end_of_turn_token_id(tokenizer) == tokenizer.convert_tokens_to_ids(eot)
    # Same ids as tokenizing the whole training text at once: no boundary effect on these examples.
    assert example["input_ids"] == tokenizer(prompt_text + written, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_multi_turn_supervises_every_assistant_turn_and_nothing_else(load, name):
    tokenizer = load(name)
    example = tokenize_conversation(tokenizer, [SYSTEM, USER], MULTI_TURN)
    assert supervised_runs(tokenizer, example) == TEMPLATES[name][3]
    last_prompt = tokenize_prompt(tokenizer, [SYSTEM, USER, *MULTI_TURN[:-1]])
    assert example["input_ids"][: len(last_prompt)] == last_prompt
    assert example["input_ids"][-1] == end_of_turn_token_id(tokenizer)


# The earlier turn " yes" (leading space) of a multi-turn completion: its supervised tokens, then as decoded.
LEADING_SPACE = {
    "smollm2-135m-instruct": (["Ġyes", "<|im_end|>"], " yes<|im_end|>"),
    "llama-2-7b-chat-hf": (["▁yes", "▁", "</s>"], "yes </s>"),  # the template trims the content
    "meta-llama-3-8b-instruct": (["yes", "<|eot_id|>"], "yes<|eot_id|>"),  # so does this one
    "qwen2.5-1.5b-instruct": (["Ġyes", "<|im_end|>"], " yes<|im_end|>"),
    "phi-3-mini-4k-instruct": (["yes", "<|end|>"], "yes<|end|>"),  # <|assistant|> strips the space: no token has it
    "mistral-7b-instruct-v0.3": (["▁yes", "</s>"], "yes</s>"),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_an_earlier_turn_starting_with_whitespace_leaves_its_header_unsupervised(load, name):
    """Phi-3's <|assistant|> strips the whitespace after it, so its offsets reach into a content that starts with a
    space; it opens the turn but is not part of it. Supervised: the content and the end-of-turn token, nothing else."""
    tokenizer = load(name)
    eot, _, _, multi_turn_runs = TEMPLATES[name]
    tokens, text = LEADING_SPACE[name]
    turns = [{"role": "assistant", "content": " yes"}, *MULTI_TURN[1:3]]
    example = tokenize_conversation(tokenizer, [SYSTEM, USER], turns)
    assert supervised_runs(tokenizer, example) == [text, multi_turn_runs[1]]
    assert tokenizer.convert_ids_to_tokens(supervised(example))[: len(tokens)] == tokens
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    assert tokenizer.convert_ids_to_tokens([i for i in supervised(example) if i in special]) == [eot, eot]


def test_assistant_turns_of_the_prompt_are_context_not_targets(load):
    """A few-shot example in the prompt is not supervised; a trimmed earlier answer is found as rendered."""
    tokenizer = load("llama-2-7b-chat-hf")
    few_shot = [{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome"}]
    turns = [{"role": "assistant", "content": " yes\n"}, *MULTI_TURN[1:]]
    example = tokenize_conversation(tokenizer, [*few_shot, USER], turns)
    assert supervised_runs(tokenizer, example) == ["yes </s>", "France </s>", '{"answer": "France"} </s>']


def test_mistral_trains_with_the_system_prompt_it_is_asked_with(load):
    """Mistral v0.3 drops the system message when the chat ends with an assistant turn; the inference prompt has it."""
    tokenizer = load("mistral-7b-instruct-v0.3")
    example = tokenize_conversation(tokenizer, [SYSTEM, USER], [ANSWER])
    assert tokenizer.decode(example["input_ids"]) == '<s>[INST] Be brief.\n\nCapital?[/INST] {"answer": "France"}</s>'
    naive = tokenizer.apply_chat_template([SYSTEM, USER, ANSWER], tokenize=False)
    assert naive == '<s>[INST] Capital?[/INST] {"answer": "France"}</s>'


@pytest.mark.parametrize(
    ("name", "default_system"),
    [
        ("smollm2-135m-instruct", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        ("qwen2.5-1.5b-instruct", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ],
)
def test_an_injected_default_system_prompt_is_kept_and_not_supervised(load, name, default_system):
    tokenizer = load(name)
    example = tokenize_conversation(tokenizer, [USER], [ANSWER])
    assert tokenizer.decode(example["input_ids"]).startswith(f"<|im_start|>system\n{default_system}<|im_end|>")
    assert tokenizer.decode(supervised(example)) == '{"answer": "France"}<|im_end|>'


def test_phi3_sequence_ends_at_end_not_endoftext(load):
    tokenizer = load("phi-3-mini-4k-instruct")
    example = tokenize_conversation(tokenizer, [SYSTEM, USER], [ANSWER])
    assert tokenizer.apply_chat_template([SYSTEM, USER, ANSWER], tokenize=False).endswith("<|end|>\n<|endoftext|>")
    assert tokenizer.eos_token_id not in example["input_ids"]  # eos is <|endoftext|>, not the end-of-turn <|end|>
    assert tokenizer.convert_ids_to_tokens(example["input_ids"][-1]) == "<|end|>"


def test_llama2_has_one_bos(load):
    tokenizer = load("llama-2-7b-chat-hf")
    example = tokenize_conversation(tokenizer, [SYSTEM, USER], [ANSWER])
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["input_ids"].count(tokenizer.bos_token_id) == 1
    text = tokenizer.apply_chat_template([SYSTEM, USER], tokenize=False, add_generation_prompt=True)
    assert tokenizer(text)["input_ids"][:2] == [tokenizer.bos_token_id] * 2  # the trap: default special tokens


def test_llama3_newlines_after_the_header_do_not_shift_the_mask(load):
    """Appended raw, an answer starting with a newline merges with the header's "\\n\\n" into "ĊĊĊ".

    The template trims the content, and the training text is built from the template's rendering.
    """
    tokenizer = load("meta-llama-3-8b-instruct")
    prompt_ids = tokenize_prompt(tokenizer, [USER])
    assert tokenizer.convert_ids_to_tokens(prompt_ids[-1]) == "ĊĊ"
    prompt_text = tokenizer.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
    naive = tokenizer(prompt_text + "\nParis<|eot_id|>", add_special_tokens=False)["input_ids"]
    assert naive[: len(prompt_ids)] != prompt_ids
    assert tokenizer.convert_ids_to_tokens(naive[len(prompt_ids) - 1]) == "ĊĊĊ"

    example = tokenize_conversation(tokenizer, [USER], [{"role": "assistant", "content": "\nParis"}])
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    assert tokenizer.convert_ids_to_tokens(supervised(example)) == ["Paris", "<|eot_id|>"]
    assert supervised(example) == example["input_ids"][len(prompt_ids) :]


def test_a_token_merged_across_the_boundary_is_split_back(load):
    """Qwen2.5 keeps a leading newline (no trim), and "assistant\\n" + "\\nParis" tokenizes to one "ĊĊ" token."""
    tokenizer = load("qwen2.5-1.5b-instruct")
    answer = {"role": "assistant", "content": "\nParis"}
    prompt_ids = tokenize_prompt(tokenizer, [SYSTEM, USER])
    naive = tokenizer.apply_chat_template([SYSTEM, USER, answer], return_dict=True)["input_ids"]
    assert naive[: len(prompt_ids)] != prompt_ids

    example = tokenize_conversation(tokenizer, [SYSTEM, USER], [answer])
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    assert tokenizer.convert_ids_to_tokens(supervised(example)) == ["Ċ", "Paris", "<|im_end|>"]
    assert tokenizer.decode(example["input_ids"]) == tokenizer.decode(naive[:-1])  # same text, minus the final "\n"


def test_too_long_examples_are_none(load):
    tokenizer = load("smollm2-135m-instruct")
    example = tokenize_conversation(tokenizer, [USER], [ANSWER])
    length = len(example["input_ids"])
    assert tokenize_conversation(tokenizer, [USER], [ANSWER], max_length=length) == example
    assert tokenize_conversation(tokenizer, [USER], [ANSWER], max_length=length - 1) is None


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_prefilled_prefix_is_the_start_of_the_supervised_ids(load, name):
    tokenizer = load(name)
    prompt_ids = tokenize_prompt(tokenizer, [SYSTEM, USER])
    prefilled = tokenize_prompt(tokenizer, [SYSTEM, USER], assistant_prefix='{"answer": "')
    answer_ids = supervised(tokenize_conversation(tokenizer, [SYSTEM, USER], [ANSWER]))
    assert prefilled[: len(prompt_ids)] == prompt_ids  # Mistral's system message included
    assert prefilled[len(prompt_ids) :] == answer_ids[:4]


def test_where_the_prefix_merges_with_the_answer(load):
    """Documented limit: Llama-3 reads ' "?"' (the no-answer) as one token, so the prefix ' "' is not its start."""
    tokenizer = load("meta-llama-3-8b-instruct")
    prompt_ids = tokenize_prompt(tokenizer, [USER])
    prefilled = tokenize_prompt(tokenizer, [USER], assistant_prefix='{"answer": "')
    example = tokenize_conversation(tokenizer, [USER], [{"role": "assistant", "content": '{"answer": "?"}'}])
    assert tokenizer.convert_ids_to_tokens(prefilled[len(prompt_ids) :]) == ['{"', "answer", '":', 'Ġ"']
    assert tokenizer.convert_ids_to_tokens(supervised(example)) == ['{"', "answer", '":', 'Ġ"?"', "}", "<|eot_id|>"]


def test_templates_that_cannot_be_trained_are_refused_with_the_reason(tokenizers_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizers_dir / "smollm2-135m-instruct")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ValueError, match="smollm2-135m-instruct.*no special token"):
        end_of_turn_token_id(tokenizer)
    with pytest.raises(ValueError, match="no special token"):
        tokenize_conversation(tokenizer, [USER], [ANSWER])

    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}<|im_end|>{% endfor %}"
    assert tokenizer.convert_ids_to_tokens(end_of_turn_token_id(tokenizer)) == "<|im_end|>"
    with pytest.raises(ValueError, match="changes message contents.*cannot be located"):
        tokenize_conversation(tokenizer, [USER], [ANSWER])

    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        tokenize_conversation(tokenizer, [USER], [ANSWER])


def test_registering_the_end_of_turn_token_as_special_takes_effect_at_once(tokenizers_dir):
    """The refusal advises tokenizer.add_special_tokens; what was cached for the tokenizer must not outlive that."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizers_dir / "smollm2-135m-instruct")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<END>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match=r"ends an assistant turn with '<END>\\n', which holds no special token"):
        tokenize_conversation(tokenizer, [USER], [ANSWER])

    assert tokenizer.add_special_tokens({"extra_special_tokens": ["<END>"]}, replace_extra_special_tokens=False) == 1
    end = tokenizer.convert_tokens_to_ids("<END>")
    example = tokenize_conversation(tokenizer, [USER], [ANSWER])
    n = len(tokenize_prompt(tokenizer, [USER]))
    assert tokenizer.decode(example["input_ids"][:n]) == "<|im_start|>user\nCapital?<END>\n<|im_start|>assistant\n"
    assert example["labels"] == [IGNORE_INDEX] * n + example["input_ids"][n:]
    answer = tokenizer.convert_ids_to_tokens(example["input_ids"][n:])
    assert answer == ['{"', "answer", '":', 'Ġ"', "France", '"}', "<END>"]
    assert example["input_ids"][-1] == end_of_turn_token_id(tokenizer) == end


def test_malformed_conversations_are_refused(load):
    tokenizer = load("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="completion with an assistant message"):
        tokenize_conversation(tokenizer, [USER], [ANSWER, USER])
    with pytest.raises(ValueError, match="string 'content'"):
        tokenize_conversation(tokenizer, [{"role": "user"}], [ANSWER])


def test_tokenize_dataset_drops_and_counts_the_too_long(load, caplog):
    from datasets import Dataset

    tokenizer = load("meta-llama-3-8b-instruct")  # quick for datasets to hash into the map's fingerprint
    long_user = {"role": "user", "content": "word " * 300}
    rows = [
        {"prompt": [SYSTEM, USER], "completion": [ANSWER], "id": "a"},
        {"prompt": [long_user], "completion": [ANSWER], "id": "b"},
        {"prompt": [USER], "completion": MULTI_TURN, "id": "c"},
    ]
    with caplog.at_level(logging.INFO, logger="llama_squad.tokenization"):
        tokenized, dropped = tokenize_dataset(Dataset.from_list(rows), tokenizer, max_length=100)
    assert dropped == 1 and "dropped 1" in caplog.text
    assert tokenized.column_names == ["input_ids", "labels"]
    assert tokenized.to_list() == [
        tokenize_conversation(tokenizer, r["prompt"], r["completion"]) for r in (rows[0], rows[2])
    ]


# TRL 1.16 tokenizes a conversational prompt/completion row in SFTTrainer._prepare_dataset: prompt ids from
# apply_chat_template(prompt, add_generation_prompt=True), ids from apply_chat_template(prompt + completion), the
# completion mask starting where the two first differ, labels built from it (completion_only_loss), then padded by
# DataCollatorForLanguageModeling. Per template, what TRL adds to our sequence (and supervises), for ANSWER:
TRL_EXTRA = {
    "smollm2-135m-instruct": ["Ċ"],  # ChatML's newline after <|im_end|>
    "qwen2.5-1.5b-instruct": ["Ċ"],
    "phi-3-mini-4k-instruct": ["<|endoftext|>"],  # appended when no generation prompt is asked
    "llama-2-7b-chat-hf": [],
    "meta-llama-3-8b-instruct": [],
    "mistral-7b-instruct-v0.3": [],
}


@pytest.fixture(scope="module")
def trl_tokenize(tmp_path_factory):
    """TRL's own preparation of one prompt/completion row, then its collator: (input_ids, labels)."""
    from datasets import Dataset
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("trl")), max_length=None, bf16=False, report_to="none")

    def run(tokenizer, prompt, completion):
        trainer = types.SimpleNamespace(_tokenizer=tokenizer, completion_only_loss=True, chat_template=None)
        # Iterable: TRL's code path is the same, without hashing the tokenizer for a cache fingerprint (seconds).
        dataset = Dataset.from_list([{"prompt": prompt, "completion": completion}]).to_iterable_dataset()
        row = next(iter(SFTTrainer._prepare_dataset(trainer, dataset, tokenizer, args, False, None, "train")))
        batch = DataCollatorForLanguageModeling(pad_token_id=0)([row])
        return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    return run


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_labels_compared_with_trl_completion_only_loss(load, trl_tokenize, name):
    """How our labels compare with TRL's built-in completion_only_loss, as observed:

    - Llama-2, Llama-3: identical ids and labels.
    - SmolLM2, Qwen2.5 (ChatML): TRL's sequence has one more token, the "\\n" after <|im_end|>, and supervises it.
    - Phi-3: TRL's sequence ends with <|end|><|endoftext|> and supervises <|endoftext|> too (the template appends it
      when no generation prompt is asked): a target generation never reaches, as it stops at <|end|>.
    - Mistral v0.3 without a system message: identical. With one, TRL trains on "<s>[INST] Capital?[/INST] ...": the
      system prompt is gone, and since the ids diverge right after "[INST]" it supervises the user's question too.
    - Multi-turn (any template): TRL supervises the whole completion, follow-up user turns and headers included.
    """
    tokenizer = load(name)
    for prompt in ([USER], [SYSTEM, USER]):
        ours = tokenize_conversation(tokenizer, prompt, [ANSWER])
        ids, labels = trl_tokenize(tokenizer, prompt, [ANSWER])
        if name.startswith("mistral") and prompt[0] is SYSTEM:
            assert "Be brief." not in tokenizer.decode(ids)
            assert tokenizer.decode(supervised({"input_ids": ids, "labels": labels})) == (
                'Capital?[/INST] {"answer": "France"}</s>'
            )
            continue
        extra = tokenizer.convert_tokens_to_ids(TRL_EXTRA[name])
        assert ids == ours["input_ids"] + extra
        assert labels == ours["labels"] + extra

    ids, labels = trl_tokenize(tokenizer, [USER], MULTI_TURN)
    ours = tokenize_conversation(tokenizer, [USER], MULTI_TURN)
    assert ids[: len(ours["input_ids"])] == ours["input_ids"]
    trl_runs = supervised_runs(tokenizer, {"input_ids": ids, "labels": labels})
    assert len(trl_runs) == 1 and "Span?" in trl_runs[0] and "JSON?" in trl_runs[0]
