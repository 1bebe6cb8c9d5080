"""MultiWOZ dialogue state tracking as slot questions: read 2.1/2.4/2.2 dialogues, build chat prompts, score states.

Every user turn of a dialogue asks, for each of the 30 tracked slots (``--granularity slot``) or for each of the 5
domains at once (``--granularity domain``), what value the user wants given the dialogue so far. The target is JSON:
``{"answer": "cheap"}``, ``{"answer": "dontcare"}``, or ``{"answer": "?"}`` when the slot is not set; a domain
question answers ``{"area": "centre", "name": "?", ...}``. Scoring (strict and fuzzy matching, joint goal accuracy)
is in :mod:`llama_squad.tasks.multiwoz_scoring`.

Layouts read (the format of each file is detected):

- MultiWOZ 2.1 / 2.4 ``data.json`` (and ConvLab-2's ``train/val/test.json``, also zipped): ``{dialogue_id: {"log":
  [...]}}``, user and system turns alternating; the belief state after user turn t is the ``metadata`` of the
  system turn that follows it, ``""``/``"none"``/``"not mentioned"`` meaning not set, ``a|b`` read as alternatives;
- MultiWOZ 2.2: a split folder of ``dialogues_*.json`` (or one such file), lists of schema-guided dialogues whose
  user turns hold per-service ``frames[].state.slot_values`` (cumulative, each a list of alternative values).

Dialogue ids lose a trailing ``.json`` so that every layout and list file agrees.

Columns of a row: ``id`` (``dialogue/turn/slot``, or ``dialogue/turn/domain``), ``task``, ``prompt``,
``completion``, ``question``, ``answers`` (the slot's gold alternatives, [] when not set; for a domain question, its
JSON target), ``dialogue_id``, ``turn`` (user-turn index, from 0), ``domain``, and ``slot`` (slot granularity) or
``slots`` + ``slot_answers`` (domain granularity: the slots asked and the gold alternatives of each).
"""

import bisect
import functools
import json
import logging
import random
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets

from llama_squad.answers import NO_ANSWER, format_json_answer, parse_json_answer, parse_json_output
from llama_squad.io import InputError, read_json
from llama_squad.tasks.common import DatasetArguments, common_option_problems, json_type
from llama_squad.tasks.multiwoz_scoring import (
    DOMAINS,
    DONTCARE,
    DONTCARE_GOLD_VALUES,
    EMPTY_GOLD_VALUES,
    SLOT_NAMES,
    score_value,
)
from llama_squad.tasks.multiwoz_scoring import summarize as summarize  # the task's summary, re-exported

logger = logging.getLogger(__name__)

NAME = "multiwoz"
GRANULARITIES = ("slot", "domain")
EXTRA_RESULT_COLUMNS = ("dialogue_id", "turn", "domain", "slot", "fuzzy_exact")

# Descriptions and allowed values of the 30 slots, as in MultiWOZ 2.2's schema.json (--schema_file reads another).
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_AREAS = ("centre", "east", "north", "south", "west")
_STATIONS = (
    "birmingham new street", "bishops stortford", "broxbourne", "cambridge", "ely", "kings lynn", "leicester",
    "london kings cross", "london liverpool street", "norwich", "peterborough", "stansted airport", "stevenage",
)  # fmt: skip
_ATTRACTION_TYPES = (
    "architecture", "boat", "cinema", "college", "concerthall", "entertainment", "museum", "multiple sports",
    "nightclub", "park", "swimmingpool", "theatre",
)  # fmt: skip
_ONE_TO_EIGHT = tuple(str(i) for i in range(1, 9))
SCHEMA_SLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attraction-area": ("area to search for attractions", _AREAS),
    "attraction-name": ("name of the attraction", ()),
    "attraction-type": ("type of the attraction", _ATTRACTION_TYPES),
    "hotel-area": ("area or place of the hotel", _AREAS),
    "hotel-bookday": ("day of the hotel booking", _DAYS),
    "hotel-bookpeople": ("number of people for the hotel booking", _ONE_TO_EIGHT),
    "hotel-bookstay": ("length of stay at the hotel", _ONE_TO_EIGHT),
    "hotel-internet": ("whether the hotel has internet", ("free", "no", "yes")),
    "hotel-name": ("name of the hotel", ()),
    "hotel-parking": ("whether the hotel has parking", ("free", "no", "yes")),
    "hotel-pricerange": ("price budget of the hotel", ("expensive", "cheap", "moderate")),
    "hotel-stars": ("star rating of the hotel", ("0", "1", "2", "3", "4", "5")),
    "hotel-type": ("what is the type of the hotel", ("guesthouse", "hotel")),
    "restaurant-area": ("area or place of the restaurant", _AREAS),
    "restaurant-bookday": ("day of the restaurant booking", _DAYS),
    "restaurant-bookpeople": ("how many people for the restaurant reservation", _ONE_TO_EIGHT),
    "restaurant-booktime": ("time of the restaurant booking", ()),
    "restaurant-food": ("the cuisine of the restaurant you are looking for", ()),
    "restaurant-name": ("name of the restaurant", ()),
    "restaurant-pricerange": ("price budget for the restaurant", ("cheap", "expensive", "moderate")),
    "taxi-arriveby": ("arrival time of taxi", ()),
    "taxi-departure": ("departure location of taxi", ()),
    "taxi-destination": ("destination of taxi", ()),
    "taxi-leaveat": ("leaving time of taxi", ()),
    "train-arriveby": ("arrival time of the train", ()),
    "train-bookpeople": ("how many train tickets you need", ("0", *_ONE_TO_EIGHT, "9", "10", "15")),
    "train-day": ("day of the train", _DAYS),
    "train-departure": ("departure location of the train", _STATIONS),
    "train-destination": ("destination of the train", _STATIONS),
    "train-leaveat": ("leaving time for the train", ()),
}

SPEAKERS = {"USER": "User", "SYSTEM": "System"}
TRUNCATION_MARKER = "(earlier turns left out)\n"
# Examples whose estimated length is this close to --max_length are counted exactly (rendered with the chat template).
EXACT_CHECK_MARGIN = 16
# Rows gathered as Python objects before they are converted to Arrow: bounds the memory of a 221k-row split.
CHUNK_ROWS = 20_000
# The answer format comes first in the user message, the same for every question of a granularity, so that the
# questions of one user turn share everything but their last line (the question): test.py computes that shared prefix
# once per turn (prefix sharing) and each question adds a few tokens of its own.
ANSWER_INSTRUCTION = (
    'Answer the question that follows the dialogue. Reply with JSON only, in the form {"answer": "..."}. Reply '
    f"{format_json_answer(DONTCARE)} if the user has no preference, and {format_json_answer(NO_ANSWER)} if the "
    "dialogue has not set this value."
)
DOMAIN_INSTRUCTION = (
    "Answer the question that follows the dialogue. Reply with JSON only: one object with exactly the keys the "
    'question lists, in that order. Give "dontcare" for a slot the user has no preference about, and '
    f'"{NO_ANSWER}" for a slot the dialogue has not set.'
)


@dataclass
class Arguments(DatasetArguments):
    """Options of ``create_dataset.py --task multiwoz``."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training dialogues: a MultiWOZ 2.1/2.4 file in the data.json layout (ConvLab-2's val.json.zip "
            "too; .zip is read directly), or a MultiWOZ 2.2 split folder of dialogues_*.json (or one such file)."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Validation dialogues (any layout of --train_file); default: carved out of the training "
                  "dialogues with --validation_fraction."},
    )  # fmt: skip
    test_file: str | None = field(default=None, metadata={"help": "Test dialogues (any layout of --train_file)."})
    data_file: str | None = field(
        default=None,
        metadata={
            "help": "The official MultiWOZ 2.1/2.4 layout instead of --train_file/--test_file: one data.json holding "
            "every dialogue; --val_list and --test_list pick the validation and test dialogues, the rest trains."
        },
    )
    val_list: str | None = field(
        default=None, metadata={"help": "With --data_file: valListFile, one dialogue id a line."}
    )
    test_list: str | None = field(
        default=None, metadata={"help": "With --data_file: testListFile, one dialogue id a line."}
    )
    schema_file: str | None = field(
        default=None,
        metadata={"help": "A MultiWOZ 2.2 schema.json for slot descriptions and allowed values; default: a built-in "
                  "copy of MultiWOZ 2.2's."},
    )  # fmt: skip
    validation_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of the training dialogues held out (seeded, whole dialogues) as the validation "
                  "split when no --validation_file or --val_list is given; 0: none."},
    )  # fmt: skip
    max_dialogues_per_split: int | None = field(
        default=None, metadata={"help": "Keep only the first N dialogues of each split (quick runs)."}
    )
    granularity: str = field(
        default="slot",
        metadata={
            "help": "slot: one question per (user turn, slot), 30 per turn. domain: one question per (user turn, "
            "domain) answered with a JSON object of all its slots, 5 per turn (fewer generations).",
            "choices": GRANULARITIES,
        },
    )
    list_categorical_values: bool = field(
        default=False,
        metadata={"help": "Name the allowed values of categorical slots (from the schema) in the question. "
                  "MultiWOZ 2.1 gold values do not always use the schema's spelling (night club, nightclub)."},
    )  # fmt: skip
    keep_empty_fraction: float = field(
        default=1.0,
        metadata={"help": 'Training split only: keep this fraction of the questions whose answer is "?" (seeded); '
                  "1: all. Downsampling them tends to cost precision."},
    )  # fmt: skip
    max_length: int = field(
        default=1024,
        metadata={"help": "Token budget of a whole example (chat template, prompt and answer): the dialogue history "
                  "is cut from the left, oldest turns first, never the current user turn; 0: no limit."},
    )  # fmt: skip
    tokenizer_name_or_path: str = field(
        default="embedded",
        metadata={"help": "The tokenizer that measures --max_length: a folder, a Hub id, or 'embedded' (SmolLM2)."},
    )
    skip_invalid: bool = field(
        default=False,
        metadata={"help": "Skip (count and log) invalid dialogues instead of stopping at the first one."},
    )
    task: str = field(default=NAME, metadata={"help": "The task: multiwoz."})


@dataclass(frozen=True)
class Slot:
    """One tracked slot: ``hotel-pricerange`` is domain ``hotel``, key ``pricerange``."""

    name: str
    description: str
    values: tuple[str, ...]  # allowed values of a categorical slot; () for free text

    @property
    def domain(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split("-", 1)[1]


@dataclass
class Dialogue:
    """One dialogue: its utterances in order, and the gold state after each user turn."""

    dialogue_id: str
    utterances: list[tuple[str, str]]  # (speaker "User"/"System", text)
    user_positions: list[int]  # index in utterances of each user turn
    states: list[dict[str, tuple[str, ...]]]  # per user turn: set slot → its gold alternatives


# ---------------------------------------------------------------------------------------------------- schema


def default_slots() -> list[Slot]:
    """The 30 tracked slots with MultiWOZ 2.2's descriptions and allowed values."""
    return [Slot(name, *SCHEMA_SLOTS[name]) for name in SLOT_NAMES]


def load_schema(path: str | Path) -> list[Slot]:
    """The 30 tracked slots described by a MultiWOZ 2.2 ``schema.json``."""
    schema = read_json(path)
    found = {}
    if isinstance(schema, list):
        for service in schema:
            slots = service.get("slots") if isinstance(service, dict) else None
            for slot in slots if isinstance(slots, list) else []:
                if not isinstance(slot, dict) or slot.get("name") not in SCHEMA_SLOTS:
                    continue
                name, description = slot["name"], slot.get("description", "")
                values = (slot.get("possible_values") or []) if slot.get("is_categorical") else []
                if not isinstance(description, str):
                    problem = f"'description' is {json_type(description)}, not a string"
                elif not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    problem = f"'possible_values' is {json_type(values)}, not a list of strings"
                else:
                    problem = None
                if problem:
                    raise InputError(
                        f"{path}: slot {name!r}: {problem}; pass the schema.json of the MultiWOZ 2.2 release, or "
                        "leave --schema_file out for the built-in copy"
                    )
                found[name] = Slot(name, description, tuple(values))
    missing = [name for name in SLOT_NAMES if name not in found]
    if missing:
        raise InputError(
            f"{path}: not a MultiWOZ 2.2 schema.json with the tracked slots (missing {', '.join(missing)}); "
            "pass the schema.json of the MultiWOZ 2.2 release, or leave --schema_file out for the built-in copy"
        )
    return [found[name] for name in SLOT_NAMES]


# ---------------------------------------------------------------------------------------------------- reading


class _Invalid(Exception):
    """A bad dialogue: what is wrong with it and how to fix it."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def clean_id(dialogue_id: str) -> str:
    """``"PMUL1635.json"`` → ``"PMUL1635"``: list files and layouts disagree on the suffix."""
    dialogue_id = dialogue_id.strip()
    return dialogue_id[:-5] if dialogue_id.endswith(".json") else dialogue_id


def gold_values(value) -> tuple[str, ...]:
    """The gold alternatives of one annotated value; () when it means "not set".

    A string may list alternatives as ``a|b`` (MultiWOZ 2.1); a list holds them (2.2). Spellings of "dontcare"
    become ``dontcare``; duplicates are dropped, the first alternative (the training target) stays first.
    """
    items = value if isinstance(value, list) else str(value).split("|")
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        lowered = text.lower()
        if lowered in EMPTY_GOLD_VALUES:
            continue
        if lowered in DONTCARE_GOLD_VALUES:
            text = DONTCARE
        if text not in out:
            out.append(text)
    return tuple(out)


def _slot_values(value, where: str, name: str) -> tuple[str, ...]:
    """The gold alternatives of a tracked slot's annotated value: a string (``a|b`` for alternatives) or a list of
    strings; any other JSON value is an error, not a gold value."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return gold_values(value)
    raise _Invalid(
        f"{where}: the value of {name} is {json_type(value)}",
        'a slot\'s value is a string ("cheap", "" when not set) or a list of alternative strings (MultiWOZ 2.2)',
    )


def _utterance(text, where: str, key: str) -> str:
    if not isinstance(text, str):
        raise _Invalid(f"{where} has no {key!r} string", f"every turn needs its utterance in {key!r}")
    return " ".join(text.split())  # one line: newlines inside an utterance would break the dialogue layout


def _state_21(metadata: dict, where: str) -> dict[str, tuple[str, ...]]:
    state = {}
    for domain in DOMAINS:
        belief = metadata.get(domain) or {}
        if not isinstance(belief, dict):
            raise _Invalid(f"{where}: metadata[{domain!r}] is not an object", "each domain holds 'semi' and 'book'")
        for part, prefix in (("semi", ""), ("book", "book")):
            slots = belief.get(part) or {}
            if not isinstance(slots, dict):
                raise _Invalid(f"{where}: metadata[{domain!r}][{part!r}] is not an object", "it maps slots to values")
            for key, value in slots.items():
                name = f"{domain}-{prefix}{key.lower()}"
                if name in SCHEMA_SLOTS:
                    values = _slot_values(value, f"{where}: metadata[{domain!r}][{part!r}]", repr(key))
                    if values:
                        state[name] = values
    return state


def _dialogue_21(dialogue_id: str, record) -> Dialogue:
    log = record.get("log") if isinstance(record, dict) else None
    if not isinstance(log, list) or not log:
        raise _Invalid("has no 'log' list", "each dialogue needs 'log': its turns, user and system alternating")
    if len(log) % 2:
        raise _Invalid(
            f"its log has {len(log)} turns, an odd number",
            "the state after each user turn is the metadata of the system turn after it: add the last system turn",
        )
    utterances, positions, states = [], [], []
    for i, turn in enumerate(log):
        if not isinstance(turn, dict):
            raise _Invalid(f"log[{i}] is not an object", "each turn is {'text': ..., 'metadata': {...}}")
        if i % 2 == 0:
            positions.append(len(utterances))
            utterances.append(("User", _utterance(turn.get("text"), f"log[{i}] (user)", "text")))
            continue
        utterances.append(("System", _utterance(turn.get("text"), f"log[{i}] (system)", "text")))
        metadata = turn.get("metadata")
        if not isinstance(metadata, dict) or not metadata:
            raise _Invalid(
                f"log[{i}] (system) has no 'metadata' belief state",
                "system turns hold the state after the user turn before them in 'metadata'",
            )
        states.append(_state_21(metadata, f"log[{i}] (system)"))
    return Dialogue(dialogue_id, utterances, positions, states)


def _id_22(index: int, record) -> str:
    """The id of the ``index``-th 2.2 dialogue of a file, or a stand-in naming its position."""
    did = record.get("dialogue_id") if isinstance(record, dict) else None
    return clean_id(did) if isinstance(did, str) else f"#{index} (no 'dialogue_id')"


def _dialogue_22(dialogue_id: str, record) -> Dialogue:
    if not isinstance(record, dict) or not isinstance(record.get("dialogue_id"), str):
        raise _Invalid("has no 'dialogue_id'", "each MultiWOZ 2.2 dialogue needs a 'dialogue_id' string")
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise _Invalid("has no 'turns' list", "each MultiWOZ 2.2 dialogue needs 'turns': its user and system turns")
    utterances, positions, states = [], [], []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Invalid(f"turns[{i}] is not an object", "each turn has speaker, utterance and frames")
        speaker = turn.get("speaker")
        where = f"turn {turn.get('turn_id', i)!r} ({speaker})"
        if speaker not in SPEAKERS:
            raise _Invalid(f"{where}: unknown speaker {speaker!r}", "the speaker is USER or SYSTEM")
        utterances.append((SPEAKERS[speaker], _utterance(turn.get("utterance"), where, "utterance")))
        if speaker == "SYSTEM":
            continue
        positions.append(len(utterances) - 1)
        frames = turn.get("frames")
        if not isinstance(frames, list):
            raise _Invalid(f"{where} has no 'frames' list", "user turns hold the state of each service in 'frames'")
        state = {}
        for frame in frames:
            service = frame.get("service") if isinstance(frame, dict) else None
            frame_state = frame.get("state") if isinstance(frame, dict) else None
            slot_values = frame_state.get("slot_values") if isinstance(frame_state, dict) else None
            if not isinstance(slot_values, dict):
                missing = "'state'" if not isinstance(frame_state, dict) else "'state.slot_values'"
                raise _Invalid(
                    f"{where}: the frame of service {service!r} has no {missing}",
                    "every frame of a user turn holds its service's state: "
                    '{"active_intent": ..., "requested_slots": [...], "slot_values": {slot: [values]}}',
                )
            for name, values in slot_values.items():
                if name in SCHEMA_SLOTS:
                    values = _slot_values(values, f"{where}: the frame of service {service!r}", repr(name))
                    if values:
                        state[name] = values
        states.append(state)
    return Dialogue(dialogue_id, utterances, positions, states)


def _load(path: Path):
    """The JSON content of ``path``; a ``.zip`` is read through its one ``.json`` member."""
    if path.suffix != ".zip":
        return read_json(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".json") and not m.startswith("__MACOSX")]
            if len(members) != 1:
                raise InputError(
                    f"{path}: expected one .json file inside, found {members}; unzip it and pass the file"
                )
            text = archive.read(members[0]).decode("utf-8")
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a readable zip file ({e}); download it again") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path} ({members[0]}): not UTF-8 text ({e}); convert it to UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} ({members[0]}): not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "the file is malformed or truncated: download it again"
        ) from None


def _read_file(path: Path, skip_invalid: bool, skipped: list[str]) -> list[Dialogue]:
    data = _load(path)
    if isinstance(data, dict):  # 2.1 / 2.4: {dialogue_id: {"goal": ..., "log": [...]}}
        records, parse = [(clean_id(str(k)), v) for k, v in data.items()], _dialogue_21
    elif isinstance(data, list):  # 2.2: [{"dialogue_id": ..., "turns": [...]}]
        records, parse = [(_id_22(i, r), r) for i, r in enumerate(data)], _dialogue_22
    else:
        raise InputError(
            f"{path}: holds a JSON {type(data).__name__}; expected MultiWOZ dialogues: an object of dialogues by id "
            "(2.1/2.4 data.json) or a list of dialogues (2.2 dialogues_*.json)"
        )
    dialogues = []
    for dialogue_id, record in records:
        try:
            dialogues.append(parse(dialogue_id, record))
        except _Invalid as e:
            message = f"{path}: dialogue {dialogue_id!r}: {e.problem}: {e.fix}"
            if not skip_invalid:
                raise InputError(
                    f"{message}. Fix or remove the dialogue, or pass --skip_invalid to skip such dialogues."
                ) from None
            skipped.append(message)
    return dialogues


def read_dialogues(path: str | Path, *, skip_invalid: bool = False) -> list[Dialogue]:
    """The dialogues of a MultiWOZ file or 2.2 split folder (layout detected), validated, in file order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("dialogues_*.json"))
        if not files:
            raise InputError(f"{path}: a folder without dialogues_*.json; pass a MultiWOZ 2.2 split folder or a file")
    elif path.exists():
        files = [path]
    else:
        raise InputError(f"{path}: no such file or folder")
    skipped: list[str] = []
    dialogues = [d for file in files for d in _read_file(file, skip_invalid, skipped)]
    if skipped:
        logger.warning("%s: skipped %d invalid dialogues; the first: %s", path, len(skipped), "; ".join(skipped[:3]))
    seen: set[str] = set()
    for d in dialogues:
        if d.dialogue_id in seen:
            raise InputError(f"{path}: dialogue id {d.dialogue_id!r} appears twice: ids must be unique")
        seen.add(d.dialogue_id)
    if not dialogues:
        raise InputError(f"{path}: holds no valid dialogues")
    return dialogues


def read_id_list(path: str | Path) -> list[str]:
    """The dialogue ids of a valListFile/testListFile, one a line (``.json`` suffix optional)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a list file; pass the valListFile or testListFile inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such list file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the list file ({e}); pass a readable UTF-8 text file") from None
    ids = [clean_id(line) for line in text.splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{path}: lists no dialogue ids (expected one id a line, e.g. PMUL0698.json)")
    return ids


# ---------------------------------------------------------------------------------------------------- splits


def split_by_dialogue(dialogues: list[Dialogue], fraction: float, seed: int) -> tuple[list[Dialogue], list[Dialogue]]:
    """Hold out whole dialogues drawn with ``seed``: (kept, held_out), each in file order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--validation_fraction {fraction}: must be in [0, 1)")
    n_held = round(fraction * len(dialogues))
    if fraction > 0 and len(dialogues) > 1:
        n_held = max(1, n_held)
    held = set(random.Random(seed).sample(range(len(dialogues)), n_held))
    return [d for i, d in enumerate(dialogues) if i not in held], [d for i, d in enumerate(dialogues) if i in held]


def check_sources(args: Arguments) -> None:
    """Raise one ValueError if the input options do not make one layout: --data_file with its list files, or
    --train_file and --test_file (and maybe --validation_file)."""
    problems = []
    if args.data_file:
        if args.train_file or args.test_file or args.validation_file:
            problems.append("give either --data_file (with --val_list/--test_list) or --train_file/--test_file")
        if not args.test_list:
            problems.append("--data_file needs --test_list (testListFile) to know the test dialogues")
    else:
        for flag, value in (("val_list", args.val_list), ("test_list", args.test_list)):
            if value:
                problems.append(
                    f"--{flag} picks dialogues out of --data_file: pass --data_file too, or give the "
                    f"{'validation' if flag == 'val_list' else 'test'} dialogues as a file"
                )
        if not args.train_file:
            if args.test_file or args.validation_file:
                problems.append("no training dialogues: pass --train_file")
            else:
                problems.append(
                    "no input: pass --train_file and --test_file (MultiWOZ files or 2.2 split folders), "
                    "or --data_file with --val_list and --test_list"
                )
        elif not args.test_file:
            problems.append("no test dialogues: pass --test_file")
    if problems:
        raise ValueError("; ".join(problems))


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


# ---------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Question:
    """One question asked at every user turn: a slot (slot granularity) or a domain's slots (domain granularity)."""

    name: str  # the slot (hotel-pricerange) or the domain (hotel)
    domain: str
    slots: tuple[Slot, ...]
    text: str  # the question, as in the ``question`` column
    lead: str  # what comes before the dialogue in the user message: the answer format (the same for every question)
    block: str  # what follows the dialogue: the question (and, for a domain, an example of the reply)


def slot_question(slot: Slot, list_values: bool) -> str:
    """The question that asks for one slot."""
    text = f"What value does the user want for {slot.name} ({slot.description})?"
    if list_values and slot.values:
        text += f" Possible values: {', '.join(slot.values)}."
    return text


def domain_question(domain: str, slots: Iterable[Slot], list_values: bool) -> str:
    """The question that asks for every slot of a domain."""
    lines = [f"What values does the user want for these {domain} slots?"]
    for slot in slots:
        values = f"; one of {', '.join(slot.values)}" if list_values and slot.values else ""
        lines.append(f"- {slot.key} ({slot.description}{values})")
    return "\n".join(lines)


def make_questions(slots: list[Slot], granularity: str, list_values: bool) -> list[Question]:
    """The questions of every user turn, in slot (or domain) order."""
    if granularity == "slot":
        groups = [(s.name, (s,), slot_question(s, list_values)) for s in slots]
    elif granularity == "domain":
        by_domain = [(d, tuple(s for s in slots if s.domain == d)) for d in DOMAINS]
        groups = [(d, group, domain_question(d, group, list_values)) for d, group in by_domain]
    else:
        raise ValueError(f"--granularity {granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    return [
        Question(name, group[0].domain, group, text, *instruction(name, group, text)) for name, group, text in groups
    ]


def instruction(name: str, slots: tuple[Slot, ...], text: str) -> tuple[str, str]:
    """(what precedes the dialogue, what follows it) in the user message of the question ``name`` about ``slots``."""
    if len(slots) == 1 and name == slots[0].name:
        return ANSWER_INSTRUCTION, f"\nQuestion: {text}"
    example = json.dumps({s.key: "..." for s in slots}, ensure_ascii=False)
    return DOMAIN_INSTRUCTION, f"\nQuestion: {text}\nReply in the form {example}"


def history_lines(dialogue: Dialogue) -> list[str]:
    """The dialogue as lines ``"User: ..."`` / ``"System: ..."``, each ending with a newline."""
    return [f"{speaker}: {text}\n" for speaker, text in dialogue.utterances]


def build_messages(history: str, question: Question, target: str, system_prompt: str) -> tuple[list[dict], list[dict]]:
    """(prompt, completion) messages of one question about ``history`` (lines from :func:`history_lines`, maybe
    prefixed by :data:`TRUNCATION_MARKER`); used for training and evaluation alike."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    user = {"role": "user", "content": f"{question.lead}\n\nDialogue:\n{history}{question.block}"}
    return system + [user], [{"role": "assistant", "content": target}]


def target_of(question: Question, state: dict[str, tuple[str, ...]]) -> str:
    """The JSON answer of ``question`` for a gold state: the first gold alternative, ``"?"`` when not set."""
    if len(question.slots) == 1 and question.name == question.slots[0].name:
        values = state.get(question.name)
        return format_json_answer(values[0] if values else NO_ANSWER)
    answer = {}
    for s in question.slots:
        values = state.get(s.name)
        answer[s.key] = values[0] if values else NO_ANSWER
    return json.dumps(answer, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------- lengths


class TokenCounter:
    """Counts tokens with a Hugging Face tokenizer: plain texts (batched), and whole chats via the chat template."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                f"--tokenizer_name_or_path {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template: "
                "pass the tokenizer of the chat model you will train, or --max_length 0"
            )
        self.tokenizer = tokenizer

    def texts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def chat(self, messages: list[dict]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


def load_token_counter(name_or_path: str) -> TokenCounter:
    """The counter of ``--tokenizer_name_or_path`` ("embedded" is the SmolLM2 tokenizer)."""
    from llama_squad.models import load_tokenizer, resolve_model_path

    local = Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if local and not Path(name_or_path).expanduser().is_dir():
        raise InputError(
            f"--tokenizer_name_or_path {name_or_path}: no such folder; pass a tokenizer folder, a cached Hub id or "
            "'embedded', or --max_length 0 for no length limit"
        )
    try:
        tokenizer = load_tokenizer(resolve_model_path(name_or_path))
    except InputError:
        raise
    except (OSError, ValueError) as e:  # no such folder or Hub id, offline and not cached, no tokenizer files
        raise InputError(
            f"--tokenizer_name_or_path {name_or_path!r}: cannot load a tokenizer ({' '.join(str(e).split())}); "
            "pass a tokenizer folder, a cached Hub id or 'embedded', or --max_length 0 for no length limit"
        ) from None
    return TokenCounter(tokenizer)


# ---------------------------------------------------------------------------------------------------- building


def dataset_features(domain_mode: bool) -> Features:
    """The columns of a split: the common ones, then the slot (or, per domain, the slots and their gold values)."""
    messages = [{"role": Value("string"), "content": Value("string")}]
    common = {
        "id": Value("string"), "task": Value("string"), "prompt": messages, "completion": messages,
        "question": Value("string"), "answers": [Value("string")], "dialogue_id": Value("string"),
        "turn": Value("int64"), "domain": Value("string"),
    }  # fmt: skip
    if domain_mode:
        return Features({**common, "slots": [Value("string")], "slot_answers": [[Value("string")]]})
    return Features({**common, "slot": Value("string")})


def _to_arrow(columns: dict[str, list], features: Features) -> Dataset:
    """The rows gathered in ``columns`` as a Dataset; empties ``columns`` (their Python objects are freed)."""
    columns["task"] = [NAME] * len(columns["id"])
    schema = features.arrow_schema  # Arrow arrays made here skip datasets' per-value Python encoding
    dataset = Dataset.from_dict({k: pa.array(v, type=schema.field(k).type) for k, v in columns.items()}, features)
    for values in columns.values():
        values.clear()
    return dataset


class _TurnHistory:
    """The history of one user turn (utterances before ``end``) from a given utterance on, each rendered once."""

    def __init__(self, lines: list[str], end: int):
        self.lines, self.end, self.rendered = lines, end, {}

    def __call__(self, start: int) -> str:
        if start not in self.rendered:
            marker = TRUNCATION_MARKER if start else ""
            self.rendered[start] = marker + "".join(self.lines[start : self.end])
        return self.rendered[start]


@dataclass
class SplitStats:
    """What :func:`build_split` made, for the log."""

    dialogues: int = 0
    turns: int = 0
    examples: int = 0
    empty_targets: int = 0
    dropped_empty: int = 0
    truncated: int = 0
    too_long: int = 0


def build_split(
    dialogues: list[Dialogue],
    questions: list[Question],
    *,
    system_prompt: str = "",
    max_length: int = 0,
    counter: TokenCounter | None = None,
    keep_empty: Callable[[], bool] | None = None,
    progress: str | None = None,
) -> tuple[Dataset, SplitStats]:
    """The chat examples of ``dialogues``: every question at every user turn.

    With ``max_length`` (and a ``counter``) the history is cut from the left to fit: each utterance is measured
    once per dialogue and the fixed part of each question once per split, so a turn costs a prefix-sum lookup per
    question, not a tokenization. ``keep_empty()`` decides whether to keep an example whose answer is all "?".
    """
    from tqdm.auto import tqdm

    limit = max_length if max_length and counter is not None else 0
    fixed = {}  # tokens of each question's messages around an empty dialogue and an empty answer
    marker_tokens = 0
    if limit:
        for q in questions:
            prompt, completion = build_messages("", q, "", system_prompt)
            fixed[q.name] = counter.chat(prompt + completion)
        marker_tokens = counter.texts([TRUNCATION_MARKER])[0]
    answer_tokens: dict[str, int] = {}
    targets: dict[tuple, str] = {}  # (question, first gold values) → JSON target: json.dumps once per distinct answer
    single = {q.name: len(q.slots) == 1 and q.name == q.slots[0].name for q in questions}
    domain_mode = not all(single.values())

    features = dataset_features(domain_mode)
    columns: dict[str, list] = {name: [] for name in features}
    chunks: list[Dataset] = []  # rows already converted to Arrow, CHUNK_ROWS at a time
    stats = SplitStats(dialogues=len(dialogues))
    for dialogue in tqdm(dialogues, desc=progress, unit="dialogue", disable=progress is None, dynamic_ncols=True):
        if len(columns["id"]) >= CHUNK_ROWS:
            chunks.append(_to_arrow(columns, features))
        lines = history_lines(dialogue)
        prefix = [0]
        if limit:
            for n in counter.texts(lines):
                prefix.append(prefix[-1] + n)
        did = dialogue.dialogue_id
        for turn, (position, state) in enumerate(zip(dialogue.user_positions, dialogue.states, strict=True)):
            stats.turns += 1
            end = position + 1
            history_from = _TurnHistory(lines, end)
            for q in questions:
                firsts = tuple(state[s.name][0] if s.name in state else None for s in q.slots)
                empty = firsts.count(None) == len(firsts)
                if empty and keep_empty is not None and not keep_empty():
                    stats.dropped_empty += 1
                    continue
                target = targets.get((q.name, firsts))
                if target is None:
                    target = targets[q.name, firsts] = target_of(q, state)
                start = 0
                if limit:
                    if target not in answer_tokens:
                        answer_tokens[target] = counter.texts([target])[0]
                    budget = limit - fixed[q.name] - answer_tokens[target]
                    if prefix[end] > budget:  # drop the oldest utterances, keep the current user turn
                        needed = prefix[end] + marker_tokens - budget
                        start = min(bisect.bisect_left(prefix, needed, 1, end), position)
                    if prefix[end] - prefix[start] + (marker_tokens if start else 0) > budget - EXACT_CHECK_MARGIN:
                        # near the budget the sum of per-utterance counts may be off by a token or two: count exactly
                        while True:
                            prompt, completion = build_messages(history_from(start), q, target, system_prompt)
                            over = counter.chat(prompt + completion) > limit
                            if not over or start == position:
                                break
                            start += 1
                        stats.too_long += over
                    stats.truncated += start > 0
                prompt, completion = build_messages(history_from(start), q, target, system_prompt)
                columns["id"].append(f"{did}/{turn}/{q.name}")
                columns["prompt"].append(prompt)
                columns["completion"].append(completion)
                columns["question"].append(q.text)
                columns["dialogue_id"].append(did)
                columns["turn"].append(turn)
                columns["domain"].append(q.domain)
                if single[q.name]:
                    columns["answers"].append(list(state.get(q.name, ())))
                    columns["slot"].append(q.name)
                else:
                    columns["answers"].append([target])
                    columns["slots"].append([s.name for s in q.slots])
                    columns["slot_answers"].append([list(state.get(s.name, ())) for s in q.slots])
                stats.examples += 1
                stats.empty_targets += empty
    chunks.append(_to_arrow(columns, features))
    return (chunks[0] if len(chunks) == 1 else concatenate_datasets(chunks)), stats


def check_arguments(args: Arguments) -> None:
    """Raise one ValueError naming every bad option (type, range, combination), before any file is read."""
    problems = common_option_problems(args)
    if args.granularity not in GRANULARITIES:
        problems.append(f"--granularity {args.granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    if not 0 <= args.keep_empty_fraction <= 1:
        problems.append(f"--keep_empty_fraction {args.keep_empty_fraction}: must be in [0, 1] (1: keep all)")
    if args.max_dialogues_per_split is not None and args.max_dialogues_per_split < 1:
        problems.append(
            f"--max_dialogues_per_split {args.max_dialogues_per_split}: give a positive number, or leave it out"
        )
    if args.max_length < 0:
        problems.append(f"--max_length {args.max_length}: give a token budget (e.g. 1024), or 0 for no limit")
    try:
        check_sources(args)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))


def build_dataset(args: Arguments) -> DatasetDict:
    """Check the options, read the dialogues, split them by dialogue and ask every question at every user turn
    (not saved)."""
    check_arguments(args)
    slots = load_schema(args.schema_file) if args.schema_file else default_slots()
    questions = make_questions(slots, args.granularity, args.list_categorical_values)
    splits = load_splits(args)
    counter = load_token_counter(args.tokenizer_name_or_path) if args.max_length else None
    rng = random.Random(args.seed)

    def keep_empty() -> bool:
        return rng.random() < args.keep_empty_fraction

    datasets = {}
    for name, dialogues in splits.items():
        datasets[name], stats = build_split(
            dialogues,
            questions,
            system_prompt=args.system_prompt,
            max_length=args.max_length,
            counter=counter,
            keep_empty=keep_empty if name == "train" and args.keep_empty_fraction < 1 else None,
            progress=name,
        )
        logger.info(
            '%-10s %5d dialogues, %6d user turns, %7d questions (%4.1f%% answered "?"%s), %d histories cut%s',
            name,
            stats.dialogues,
            stats.turns,
            stats.examples,
            100 * stats.empty_targets / max(1, stats.examples),
            f", {stats.dropped_empty} dropped" if stats.dropped_empty else "",
            stats.truncated,
            f", {stats.too_long} over --max_length {args.max_length} even so" if stats.too_long else "",
        )
    return DatasetDict(datasets)


# ---------------------------------------------------------------------------------------------------- decoding


def dialogue_of(example: dict) -> str:
    """The dialogue lines of an example's prompt (what :func:`build_messages` put before the question)."""
    content = next(m["content"] for m in example["prompt"] if m["role"] == "user")
    start = len("Dialogue:\n") if content.startswith("Dialogue:\n") else 0
    end = content.rfind("\nQuestion: ")
    history = content[start : end if end >= 0 else len(content)]
    return history.removeprefix(TRUNCATION_MARKER)


def constraint_of(example: dict, mode: str):
    """What ``--constrain mode`` lets the model answer (a :class:`llama_squad.constrain.AnswerSpec`; None: anything):
    the keys asked, in order (``answer``, or a domain's slots), each any string (json), or (extractive) one of a
    categorical slot's schema values, or a span of the dialogue lower-cased (gold values are lower case: 91% of the
    non-categorical MultiWOZ 2.1 test values are spans of the lower-cased dialogue, 63% of the dialogue as written),
    or "dontcare", or "?"."""
    from llama_squad.constrain import AnswerSpec, Field, json_spec

    if mode == "none":
        return None
    domain = "slots" in example
    slots = list(example["slots"]) if domain else [example["slot"]]
    keys = [name.split("-", 1)[1] for name in slots] if domain else ["answer"]
    if mode == "json":
        return json_spec(keys)
    dialogue = dialogue_of(example).lower()
    fields = []
    for key, name in zip(keys, slots, strict=True):
        values = SCHEMA_SLOTS[name][1] if name in SCHEMA_SLOTS else ()
        if values:
            fields.append(Field(key, choices=(*values, DONTCARE, NO_ANSWER)))
        else:
            fields.append(Field(key, source=dialogue, choices=(DONTCARE, NO_ANSWER)))
    return AnswerSpec(tuple(fields))


# ---------------------------------------------------------------------------------------------------- scoring


def _value_of(obj: dict | None, slot: str) -> str | None:
    """The predicted value of ``slot`` in a domain answer (short key, or the full slot name), as text, or None."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(slot.split("-", 1)[1], obj.get(slot))
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    return None


@functools.cache
def _slot_questions() -> dict[str, str]:
    """The question of each slot (built-in schema): a domain answer's results rows say which slot they score."""
    return {slot.name: slot_question(slot, False) for slot in default_slots()}


def score_output(raw_output: str, example: dict) -> list[dict]:
    """The scored results rows of one generated answer: one per slot asked (one in slot granularity).

    Unparseable output, or a slot missing from a domain answer, counts as "not set" ("?").
    """
    common = {"dialogue_id": example["dialogue_id"], "turn": example["turn"], "domain": example["domain"]}
    if "slots" not in example:
        parsed = parse_json_answer(raw_output)
        scores = score_value(example["slot"], parsed.answer, list(example["answers"]))
        return [
            {
                **common,
                "slot": example["slot"],
                "parsed_answer": parsed.answer if parsed.found else "",
                "valid_json": parsed.valid_json,
                "answer_found": parsed.found,
                "abstained": parsed.abstained,
                **scores,
            }
        ]
    parsed = parse_json_output(raw_output)
    questions = _slot_questions()
    rows = []
    for name, gold in zip(example["slots"], example["slot_answers"], strict=True):
        value = _value_of(parsed.value, name)
        rows.append(
            {
                **common,
                "id": f"{example['id']}/{name}",
                "question": questions.get(name, name),
                "answers": list(gold),
                "slot": name,
                "parsed_answer": value if value is not None else "",
                "valid_json": parsed.valid_json,
                "answer_found": value is not None,
                "abstained": value is not None and value.strip() == NO_ANSWER,
                **score_value(name, value, list(gold)),
            }
        )
    return rows
