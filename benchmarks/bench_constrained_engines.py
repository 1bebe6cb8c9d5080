"""Constrained decoding engines on real SQuAD v2 questions: ours (llama_squad.constrain, json and extractive) against
maintained libraries (xgrammar, lm-format-enforcer, outlines) with a JSON-schema constraint {"answer": string}, each
timed with greedy decoding on the same batches; seconds per question and the ratio against the unconstrained
baseline of the same run, plus valid JSON and exact match.

    python benchmarks/bench_constrained_engines.py --questions 64 --batch_size 16
    PYTHONPATH=/tmp/cglibs python benchmarks/bench_constrained_engines.py   # libraries installed aside

A library that is not installed is reported as such. Extractive constraints are not expressible in the libraries'
JSON schemas; as a regex, the alternation of a context's spans is printed to show its size.
"""

import json
import random
import sys
import time
from pathlib import Path

from common import DEV
from common.options import add_generation_options, benchmark_parser
from common.report import print_table


def squad_examples(path: Path, n: int, seed: int) -> list[dict]:
    from llama_squad.tasks import squad_v2
    from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT

    records = squad_v2.read_squad(path)
    records = random.Random(seed).sample(records, n)
    return [dict(row) for row in squad_v2.to_dataset(records, "single_turn", DEFAULT_SYSTEM_PROMPT)]


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def library_processors(model, tokenizer, stop_ids):
    """name → (a function of a batch size giving generate kwargs, or the reason it is unavailable)."""
    engines = {}
    try:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
        start = time.perf_counter()
        compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
        engines["xgrammar"] = (lambda n: {"logits_processor": [xgr.contrib.hf.LogitsProcessor(compiled)]}, None)
        print(f"xgrammar: compiled the schema in {time.perf_counter() - start:.2f} s")
    except ImportError as e:
        engines["xgrammar"] = (None, f"not installed ({e})")
    try:
        import transformers
        import transformers.tokenization_utils_base as base

        sys.modules.setdefault("transformers.tokenization_utils", base)  # lm-format-enforcer 0.11 imports 4.x paths
        transformers.tokenization_utils = base
        from lmformatenforcer import JsonSchemaParser
        from lmformatenforcer.integrations.transformers import (
            build_token_enforcer_tokenizer_data,
            build_transformers_prefix_allowed_tokens_fn,
        )

        start = time.perf_counter()
        data = build_token_enforcer_tokenizer_data(tokenizer)
        print(f"lm-format-enforcer: tokenizer data in {time.perf_counter() - start:.2f} s")
        engines["lm-format-enforcer"] = (
            lambda n: {"prefix_allowed_tokens_fn": build_transformers_prefix_allowed_tokens_fn(
                data, JsonSchemaParser(SCHEMA))},
            None,
        )  # fmt: skip
    except ImportError as e:
        engines["lm-format-enforcer"] = (None, f"not installed ({e})")
    try:
        import outlines
        from outlines.backends import get_json_schema_logits_processor

        wrapped = outlines.from_transformers(model, tokenizer)
        start = time.perf_counter()
        get_json_schema_logits_processor("outlines_core", wrapped, json.dumps(SCHEMA))
        print(f"outlines: index built in {time.perf_counter() - start:.2f} s")

        def outlines_kwargs(n):
            processor = get_json_schema_logits_processor("outlines_core", wrapped, json.dumps(SCHEMA))
            return {"logits_processor": [processor]}

        engines["outlines"] = (outlines_kwargs, None)
    except ImportError as e:
        engines["outlines"] = (None, f"not installed ({e})")
    return engines


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--squad_file", default=str(DEV))
    parser.add_argument("--model_name_or_path", default="embedded")
    parser.add_argument("--questions", type=int, default=64)
    add_generation_options(parser, batch_size=16, max_new_tokens=32)
    parser.add_argument("--seed", type=int, default=0, help="draws the questions")
    args = parser.parse_args(argv)

    import torch
    from transformers import LogitsProcessorList

    from llama_squad.config import ModelLoadingArguments
    from llama_squad.constrain import ConstrainedLogitsProcessor, Constrainer
    from llama_squad.evaluation import Answerer
    from llama_squad.generation import GenerationOptions, Generator, left_pad
    from llama_squad.models import load_for_inference
    from llama_squad.tasks import squad_v2

    torch.set_num_threads(2)
    model, tokenizer = load_for_inference(ModelLoadingArguments(args.model_name_or_path, dtype="float32"))
    generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=args.max_new_tokens))
    examples = squad_examples(Path(args.squad_file), args.questions, args.seed)
    prompts = [Answerer(generator).prompt_ids(ex["prompt"], last_turn=True)[0] for ex in examples]
    n = len(examples)
    batches = [list(range(i, min(i + args.batch_size, n))) for i in range(0, n, args.batch_size)]

    start = time.perf_counter()
    constrainer = Constrainer(tokenizer, generator.stop_ids)
    print(f"ours: vocabulary tables in {time.perf_counter() - start:.2f} s")

    def ours(mode):
        def kwargs(batch):
            specs = [squad_v2.constraint_of(examples[i], mode) for i in batch]
            grammars = [constrainer.grammar(spec) for spec in specs]
            processor = ConstrainedLogitsProcessor(grammars, 1, args.max_new_tokens)
            return {"logits_processor": LogitsProcessorList([processor])}

        return kwargs, None

    engines = {"none": (lambda batch: {}, None), "ours json": ours("json"), "ours extractive": ours("extractive")}
    libraries = library_processors(model, tokenizer, generator.stop_ids)
    for name, (make, why) in libraries.items():
        engines[name] = (None, why) if make is None else (lambda batch, make=make: make(len(batch)), None)

    rows = {}
    for name, (make, why) in engines.items():
        if make is None:
            print(f"{name}: {why}")
            continue
        seconds, valid, exact, steps = 0.0, 0, 0.0, 0
        for batch in batches:
            ids, mask = left_pad([prompts[i] for i in batch], generator.pad_id)
            kwargs = generator.options.generate_kwargs(generator.stop_ids, generator.pad_id)
            try:
                start = time.perf_counter()
                extra = make(batch)
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, **extra)
                seconds += time.perf_counter() - start
            except Exception as e:  # noqa: BLE001 (a library that fails here is reported, not fatal)
                print(f"{name}: failed: {type(e).__name__}: {e}")
                seconds = None
                break
            steps += out.shape[1] - ids.shape[1]
            for i, row in zip(batch, out[:, ids.shape[1] :].tolist(), strict=True):
                cut = next((k for k, t in enumerate(row) if t in generator.stop_ids), len(row))
                text = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
                scored = squad_v2.score_output(text, examples[i])[0]
                valid += scored["valid_json"]
                exact += scored["exact"]
        if seconds is not None:
            rows[name] = (seconds, valid, exact, steps)
            print(f"{name}: {seconds:.1f} s, {valid} valid JSON, {exact:.0f} exact, {steps} steps", flush=True)
    base = rows["none"][0]
    print(f"\n{len(examples)} SQuAD v2 dev questions, batches of {args.batch_size}, greedy, max_new_tokens "
          f"{args.max_new_tokens}, {args.model_name_or_path}, {torch.get_num_threads()} CPU threads")  # fmt: skip
    n = len(examples)
    columns = [("engine", "<22"), ("s/question", ">10.3f"), ("overhead s/q", ">12.3f"), ("ratio", ">6.2f"),
               ("valid_json", ">10.1%"), ("exact", ">6.1%"), ("steps", "")]  # fmt: skip
    print_table(columns, [
        [name, seconds / n, (seconds - base) / n, seconds / base, valid / n, exact / n, steps]
        for name, (seconds, valid, exact, steps) in rows.items()
    ], rule=False)  # fmt: skip

    context = examples[0]["context"]
    spans = {context[i:j] for i in range(len(context)) for j in range(i + 1, len(context) + 1)}
    print(f"\nextractive as a regex alternation: a {len(context)}-character context has {len(spans)} distinct spans, "
          f"{sum(len(s) for s in spans)} characters in all")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
