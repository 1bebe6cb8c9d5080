"""Batching questions: by prompt length, or in groups that share a prompt prefix (computed once by the engine)."""

from collections.abc import Iterator

from llama_squad.generation import common_prefix_length


def batches_by_length(examples: list[dict], lengths: list[int], batch_size: int) -> Iterator[list[dict]]:
    """Batches of similar prompt lengths (longest first, so an out-of-memory shows at once): little padding."""
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]


def prefix_groups(prompts: list[list[int]], batch_size: int) -> list[tuple[list[int], int]]:
    """Consecutive prompts split into groups that share a prefix: (indices, tokens all of them share), each group of at
    most ``batch_size`` prompts, so that the model reads as few tokens as it can.

    A group's prefix runs once, then every member's own tokens, padded to the longest: it costs ``shared + members *
    (longest - shared)`` tokens, and a prompt alone costs its length. The split of least total cost is found exactly
    (dynamic programming over the split points). Datasets are stored with the prompts that share a prefix together:
    the 30 slot questions of one MultiWOZ turn (the dialogue first, the slot last), the questions of one SQuAD
    paragraph (the context first). Consecutive turns of a dialogue share most of their tokens too, but each later turn
    brings new dialogue, which all of its questions would feed on their own: the cost keeps the turns apart (on the
    benchmark's 42 sampled turns: one group per turn at slot level, for any batch size from 30 up). Each prompt keeps
    at least its last token of its own.
    """
    import numpy as np

    n = len(prompts)
    if n == 0:
        return []
    lengths = np.array([len(p) for p in prompts])
    # adjacent[i]: tokens prompt i shares with prompt i + 1; a run of prompts shares the least of its adjacent pairs
    adjacent = np.array([common_prefix_length(prompts[i], prompts[i + 1]) for i in range(n - 1)], dtype=np.int64)
    best = np.zeros(n + 1)  # best[j]: the least cost of the first j prompts
    start = np.zeros(n + 1, dtype=np.int64)  # where the last group of that split starts
    shared_of = np.zeros(n + 1, dtype=np.int64)
    for j in range(n):  # the group that ends with prompt j starts at j, j - 1, ... (the latest start first: ties)
        first = max(0, j - batch_size + 1)
        members = np.arange(1, j - first + 2)
        shortest = np.minimum.accumulate(lengths[first : j + 1][::-1])
        longest = np.maximum.accumulate(lengths[first : j + 1][::-1])
        common = np.concatenate(([lengths[j]], np.minimum.accumulate(adjacent[first:j][::-1])))
        shared = np.minimum(common, shortest - 1)
        cost = best[j - members + 1] + shared + members * (longest - shared)
        k = int(np.argmin(cost))
        best[j + 1], start[j + 1], shared_of[j + 1] = cost[k], j - k, shared[k]
    groups = []
    end = n
    while end > 0:
        groups.append((list(range(int(start[end]), end)), int(shared_of[end])))
        end = int(start[end])
    return groups[::-1]


def batches_of_groups(groups: list[tuple[list[int], int]], lengths: list[int], batch_size: int) -> Iterator[list]:
    """Whole groups packed into batches of at most ``batch_size`` prompts, longest first (an out-of-memory shows at
    once; similar lengths pad little): lists of (index, shared prefix length)."""
    groups = sorted(groups, key=lambda g: -max(lengths[i] for i in g[0]))
    batch: list[tuple[int, int]] = []
    for members, shared in groups:
        if batch and len(batch) + len(members) > batch_size:
            yield batch
            batch = []
        batch.extend((i, shared) for i in members)
    if batch:
        yield batch
