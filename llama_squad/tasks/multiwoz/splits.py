"""The train / validation / test dialogues: the files given, or one data.json split by its list files."""

import functools
import logging
import random

from llama_squad.files import InputError
from llama_squad.tasks.multiwoz.options import Arguments, check_sources
from llama_squad.tasks.multiwoz.readers import Dialogue, read_dialogues, read_id_list

logger = logging.getLogger(__name__)


def split_by_dialogue(dialogues: list[Dialogue], fraction: float, seed: int) -> tuple[list[Dialogue], list[Dialogue]]:
    """Hold out whole dialogues drawn with ``seed``: (kept, held_out), each in file order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--validation_fraction {fraction}: must be in [0, 1)")
    n_held = round(fraction * len(dialogues))
    if fraction > 0 and len(dialogues) > 1:
        n_held = max(1, n_held)
    held = set(random.Random(seed).sample(range(len(dialogues)), n_held))
    return [d for i, d in enumerate(dialogues) if i not in held], [d for i, d in enumerate(dialogues) if i in held]


def load_splits(args: Arguments) -> dict[str, list[Dialogue]]:
    """train / validation / test dialogues: the files given, or data.json split by its list files; validation
    dialogues are carved out of the training ones when not given."""
    check_sources(args)
    read = functools.partial(read_dialogues, skip_invalid=args.skip_invalid)
    if args.data_file:
        everything = {d.dialogue_id: d for d in read(args.data_file)}
        picked = {}
        for name, list_file in (("validation", args.val_list), ("test", args.test_list)):
            if list_file:
                ids = read_id_list(list_file)
                missing = [i for i in ids if i not in everything]
                if missing:
                    raise InputError(
                        f"{list_file}: {len(missing)} listed dialogues are not in {args.data_file} (e.g. "
                        f"{missing[0]!r}); pass the list files of the same MultiWOZ release"
                    )
                picked[name] = [everything[i] for i in ids]
        if len(picked) == 2:  # a dialogue in both would give both splits its question ids
            validation_ids = {d.dialogue_id for d in picked["validation"]}
            both = [d.dialogue_id for d in picked["test"] if d.dialogue_id in validation_ids]
            if both:
                raise InputError(
                    f"{args.val_list} and {args.test_list} both list dialogue {both[0]!r} ({len(both)} "
                    f"dialogue{'s' if len(both) > 1 else ''} in both): a dialogue belongs to one split: remove it "
                    "from one of the list files"
                )
        listed = {d.dialogue_id for split in picked.values() for d in split}
        train = [d for d in everything.values() if d.dialogue_id not in listed]
        if "validation" not in picked:
            train, picked["validation"] = split_by_dialogue(train, args.validation_fraction, args.seed)
        splits = {"train": train, "validation": picked["validation"], "test": picked["test"]}
    else:
        train = read(args.train_file)
        if args.validation_file:
            validation = read(args.validation_file)
        else:
            train, validation = split_by_dialogue(train, args.validation_fraction, args.seed)
        splits = {"train": train, "validation": validation, "test": read(args.test_file)}
    if not splits["train"]:
        raise ValueError("no training dialogues are left after taking out the validation and test dialogues")
    overlap = {d.dialogue_id for d in splits["train"]} & {d.dialogue_id for d in splits["test"]}
    if overlap:
        logger.warning("%d test dialogues are also training dialogues (e.g. %s)", len(overlap), min(overlap))
    if args.max_dialogues_per_split is not None:
        splits = {name: split[: args.max_dialogues_per_split] for name, split in splits.items()}
    return splits
