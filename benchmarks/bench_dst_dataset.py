"""How fast the MultiWOZ slot-level dataset builds from the 1,000 test dialogues (7,372 turns × 30 slots = 221,160
questions, histories fitted to --max_length tokens; goal: < 30 s on 2 cores).

    python benchmarks/bench_dst_dataset.py [--max_length 1024] [--baseline_dialogues 100] [--repeats 1]

Baseline, in the same run: the naive recipe that renders and tokenizes the whole chat of every (turn, slot) example
with the chat template, dropping the oldest utterance and tokenizing again until it fits, then Dataset.from_list.
It is timed on the first --baseline_dialogues dialogues (it is slow), and so is ours, for the ratio; ours alone is
also timed on all 1,000. Ours measures each utterance once per dialogue and each question's fixed part once, so a
turn costs a prefix-sum lookup per slot; only examples within a few tokens of the budget are counted exactly.
"""

import sys
import tempfile

from common import MULTIWOZ21, SMOLLM2, missing_data
from common.machine import PeakMemory
from common.options import benchmark_parser
from common.report import quiet
from common.timing import best_time

TEST = MULTIWOZ21 / "test.json.zip"


def ours(dialogues, questions, counter, max_length: int):
    from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT
    from llama_squad.tasks.multiwoz import build_split

    dataset, _ = build_split(
        dialogues, questions, system_prompt=DEFAULT_SYSTEM_PROMPT, max_length=max_length, counter=counter
    )
    return dataset


def baseline(dialogues, questions, counter, max_length: int):
    from datasets import Dataset

    from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT
    from llama_squad.tasks.multiwoz import TRUNCATION_MARKER, build_messages, history_lines, target_of

    rows = []
    for dialogue in dialogues:
        lines = history_lines(dialogue)
        for turn, (position, state) in enumerate(zip(dialogue.user_positions, dialogue.states, strict=True)):
            for q in questions:
                target = target_of(q, state)
                start = 0
                while True:
                    history = (TRUNCATION_MARKER if start else "") + "".join(lines[start : position + 1])
                    prompt, completion = build_messages(history, q, target, DEFAULT_SYSTEM_PROMPT)
                    if counter.chat(prompt + completion) <= max_length or start == position:
                        break
                    start += 1
                did = dialogue.dialogue_id
                rows.append(
                    {"id": f"{did}/{turn}/{q.name}", "task": "multiwoz", "prompt": prompt, "completion": completion,
                     "question": q.text, "answers": list(state.get(q.name, ())), "dialogue_id": did, "turn": turn,
                     "domain": q.domain, "slot": q.name}
                )  # fmt: skip
    return Dataset.from_list(rows)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--baseline_dialogues", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokenizer", default=str(SMOLLM2) if SMOLLM2.exists() else "embedded")
    args = parser.parse_args()
    if missing_data(TEST):
        return 1
    quiet()
    from llama_squad.tasks.multiwoz import default_slots, load_token_counter, make_questions, read_dialogues

    counter = load_token_counter(args.tokenizer)
    questions = make_questions(default_slots(), "slot", False)
    read_s, dialogues = best_time(read_dialogues, 1, TEST)
    subset = dialogues[: args.baseline_dialogues]

    base_s, base = best_time(baseline, args.repeats, subset, questions, counter, args.max_length)
    sub_s, sub = best_time(ours, args.repeats, subset, questions, counter, args.max_length)
    assert base["prompt"] == sub["prompt"] and base["completion"] == sub["completion"], "not the same examples"
    full_s, full = best_time(ours, args.repeats, dialogues, questions, counter, args.max_length)
    with tempfile.TemporaryDirectory() as tmp:
        save_s, _ = best_time(full.save_to_disk, 1, tmp)

    turns = sum(len(d.states) for d in dialogues)
    print(f"dialogues / turns / questions  {len(dialogues)} / {turns} / {len(full)}  (--max_length {args.max_length})")
    print(f"read test.json.zip             {read_s:6.2f} s")
    print(f"ours, all dialogues            {full_s:6.2f} s  {len(full) / full_s:8.0f} questions/s  (goal < 30 s)")
    print(f"  + read                       {read_s + full_s:6.2f} s   (save_to_disk: {save_s:.2f} s more)")
    print(f"first {len(subset)} dialogues ({len(sub)} questions, identical examples):")
    print(f"  baseline (re-tokenize each)  {base_s:6.2f} s  {len(base) / base_s:8.0f} questions/s")
    print(f"  ours                         {sub_s:6.2f} s  {len(sub) / sub_s:8.0f} questions/s")
    print(f"  speed-up                     {base_s / sub_s:6.1f}x  (best of {args.repeats})")
    print(f"peak memory of this process    {PeakMemory().peak_mib():6.0f} MB (Linux)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
