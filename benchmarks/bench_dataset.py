"""How fast create_dataset.py builds the SQuAD v2 chat dataset from the 11,873 dev questions (goal: < 10 s on 2 cores).

    python benchmarks/bench_dataset.py [--repeats 3]

Baseline, in the same run: the usual datasets recipe (flat rows → Dataset.map with a per-row formatting function,
as the original llama-squad did), on the same questions with the same prompts. Prints seconds and the ratio.
"""

import sys
import tempfile
from pathlib import Path

from common import DEV, missing_data
from common.data import dev_split
from common.options import benchmark_parser
from common.report import quiet
from common.timing import best_time


def ours(tmp: Path) -> int:
    from llama_squad.files import atomic_path

    dataset = dev_split()
    with atomic_path(Path(tempfile.mkdtemp(dir=tmp)) / "ours", is_dir=True) as out:
        dataset.save_to_disk(str(out))
    return sum(len(s) for s in dataset.values())


def baseline(tmp: Path) -> int:
    import json

    from datasets import Dataset

    from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT
    from llama_squad.tasks.squad_v2 import Record, build_messages

    data = json.loads(DEV.read_text())["data"]
    rows = [
        {"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
         "answers": [x["text"] for x in qa["answers"]], "article": i}
        for i, a in enumerate(data) for p in a["paragraphs"] for qa in p["qas"]
    ]  # fmt: skip

    def fmt(row):
        record = Record(
            row["id"], row["title"], row["context"], row["question"], tuple(row["answers"]), row["article"]
        )
        prompt, completion = build_messages(record, "single_turn", DEFAULT_SYSTEM_PROMPT)
        return {"prompt": prompt, "completion": completion}

    dataset = Dataset.from_list(rows).map(fmt)
    dataset.save_to_disk(str(Path(tempfile.mkdtemp(dir=tmp)) / "baseline"))
    return len(dataset)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if missing_data(DEV):
        return 1
    quiet()
    with tempfile.TemporaryDirectory() as tmp:  # each run writes its dataset to a new folder in it
        base_s, base_n = best_time(baseline, args.repeats, Path(tmp))
        ours_s, ours_n = best_time(ours, args.repeats, Path(tmp))
    print(f"questions                 {ours_n} (baseline {base_n})")
    print(f"baseline (Dataset.map)    {base_s:6.2f} s  {base_n / base_s:8.0f} questions/s")
    print(f"create_dataset (ours)     {ours_s:6.2f} s  {ours_n / ours_s:8.0f} questions/s  (goal < 10 s)")
    print(
        f"speed-up                  {base_s / ours_s:6.2f}x  (best of {args.repeats}, includes reading, "
        f"validating, splitting and saving)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
