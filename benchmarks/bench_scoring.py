"""How fast llama_squad.squad_eval scores the 11,873 SQuAD v2 dev predictions (requirement: < 1 s on 2 cores).

    python benchmarks/bench_scoring.py [--repeats 5] [--predictions FILE]

Scores ``../shared/data/squad_v2/predictions/bidaf_sa_elmo_allenai.json`` against ``dev-v2.0.json`` with our
``evaluate()`` and, in the same run, with a baseline written the way the official evaluate-v2.0.py works (every gold
answer normalized again for every prediction, character-by-character punctuation removal, plain loops and dicts).
Prints the best wall time of N runs of each, predictions per second, the ratio, and whether both give the same
scores. File reading is not timed.
"""

import argparse
import collections
import json
import re
import string
import sys
from pathlib import Path

from common import DEV, missing_data
from common.timing import best_time

PREDICTIONS = DEV.parent / "predictions" / "bidaf_sa_elmo_allenai.json"
REQUIREMENT_S = 1.0


# ---------------------------------------------------------------------------------------------------- baseline


def baseline_normalize(text):
    text = text.lower()
    punctuation = set(string.punctuation)
    text = "".join(c for c in text if c not in punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def baseline_tokens(text):
    return baseline_normalize(text).split() if text else []


def baseline_f1(gold, pred):
    gold_tokens, pred_tokens = baseline_tokens(gold), baseline_tokens(pred)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if not gold_tokens or not pred_tokens:
        return int(gold_tokens == pred_tokens)
    if same == 0:
        return 0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def baseline_evaluate(data, predictions):
    """The official pipeline: has-answer map, raw scores, the (no-op) 1.0 threshold, overall and split averages."""
    has_answer, exact, f1 = {}, {}, {}
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                has_answer[qid] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if baseline_normalize(a["text"])] or [""]
                if qid not in predictions:
                    continue
                pred = predictions[qid]
                exact[qid] = max(int(baseline_normalize(g) == baseline_normalize(pred)) for g in golds)
                f1[qid] = max(baseline_f1(g, pred) for g in golds)
    na_probs = {qid: 0.0 for qid in predictions}
    exact = {qid: float(not has_answer[qid]) if na_probs[qid] > 1.0 else s for qid, s in exact.items()}
    f1 = {qid: float(not has_answer[qid]) if na_probs[qid] > 1.0 else s for qid, s in f1.items()}
    result = {
        "exact": 100.0 * sum(exact.values()) / len(exact),
        "f1": 100.0 * sum(f1.values()) / len(f1),
        "total": len(exact),
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, h in has_answer.items() if h is wanted]
        if qids:
            result[f"{prefix}_exact"] = 100.0 * sum(exact[q] for q in qids) / len(qids)
            result[f"{prefix}_f1"] = 100.0 * sum(f1[q] for q in qids) / len(qids)
            result[f"{prefix}_total"] = len(qids)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Runs of each scorer; the best time counts.")
    parser.add_argument("--predictions", default=str(PREDICTIONS), help="Predictions file to score.")
    args = parser.parse_args(argv)
    if missing_data(DEV, Path(args.predictions)):
        return 1

    from llama_squad.squad_eval import evaluate

    data = json.loads(DEV.read_text(encoding="utf-8"))["data"]
    predictions = json.loads(Path(args.predictions).read_text(encoding="utf-8"))
    n = sum(len(p["qas"]) for a in data for p in a["paragraphs"])

    ours_s, ours = best_time(lambda: evaluate(data, predictions), args.repeats)
    base_s, base = best_time(lambda: baseline_evaluate(data, predictions), args.repeats)
    same = list(ours) == list(base) and all(abs(ours[k] - base[k]) <= 1e-9 for k in base)

    print(f"scoring {n:,} predictions ({Path(args.predictions).name}), best of {args.repeats} runs")
    print(f"  ours      {ours_s:7.3f} s  {n / ours_s:10,.0f} predictions/s")
    print(f"  baseline  {base_s:7.3f} s  {n / base_s:10,.0f} predictions/s  (official way, inline)")
    print(f"  ours/baseline time: {ours_s / base_s:.2f} ({base_s / ours_s:.1f}x faster)")
    print(f"  same scores: {'yes' if same else 'NO'} (exact {ours['exact']:.6f}, f1 {ours['f1']:.6f})")
    verdict = "met" if ours_s < REQUIREMENT_S else "NOT met"
    print(f"  requirement: {n:,} predictions in < {REQUIREMENT_S:g} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
