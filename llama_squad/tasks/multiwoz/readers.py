"""Reading MultiWOZ dialogues (2.1/2.4 data.json, ConvLab-2's zips, 2.2 folders) and valListFile/testListFile.

Layouts read (the format of each file is detected):

- MultiWOZ 2.1 / 2.4 ``data.json`` (and ConvLab-2's ``train/val/test.json``, also zipped): ``{dialogue_id: {"log":
  [...]}}``, user and system turns alternating; the belief state after user turn t is the ``metadata`` of the
  system turn that follows it, ``""``/``"none"``/``"not mentioned"`` meaning not set, ``a|b`` read as alternatives;
- MultiWOZ 2.2: a split folder of ``dialogues_*.json`` (or one such file), lists of schema-guided dialogues whose
  user turns hold per-service ``frames[].state.slot_values`` (cumulative, each a list of alternative values).

The domains of a dialogue's goal are kept (2.1/2.4: the goal's non-empty domain entries; 2.2: its ``services``):
per-domain joint goal accuracy picks dialogues by them, as the literature does.

Dialogue ids lose a trailing ``.json`` so that every layout and list file agrees.
"""

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llama_squad.files import InputError, read_json
from llama_squad.tasks.common import json_type
from llama_squad.tasks.multiwoz.schema import (
    DOMAINS,
    DONTCARE,
    DONTCARE_GOLD_VALUES,
    EMPTY_GOLD_VALUES,
    SCHEMA_SLOTS,
)

logger = logging.getLogger(__name__)

SPEAKERS = {"USER": "User", "SYSTEM": "System"}


# Entries of a 2.1 goal that are not domains (TRADE's create_data.py: IGNORE_KEYS_IN_GOAL).
GOAL_KEYS_NOT_DOMAINS = frozenset({"eod", "topic", "messageLen", "message"})


@dataclass
class Dialogue:
    """One dialogue: its utterances in order, the gold state after each user turn, and the domains of its goal."""

    dialogue_id: str
    utterances: list[tuple[str, str]]  # (speaker "User"/"System", text)
    user_positions: list[int]  # index in utterances of each user turn
    states: list[dict[str, tuple[str, ...]]]  # per user turn: set slot → its gold alternatives
    goal_domains: tuple[str, ...] = ()  # sorted; () when the data gives no goal (per-domain JGA picks dialogues by it)


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


def _set_slots(state: dict, slot_values: dict, where: str, prefix: str = "", lower: bool = False) -> None:
    """Put into ``state`` the tracked slots that ``slot_values`` sets: ``prefix + key`` (``key`` lower-cased with
    ``lower``) → its gold alternatives."""
    for key, value in slot_values.items():
        name = prefix + (key.lower() if lower else key)
        if name in SCHEMA_SLOTS:
            values = _slot_values(value, where, repr(key))
            if values:
                state[name] = values


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
            _set_slots(state, slots, f"{where}: metadata[{domain!r}][{part!r}]", f"{domain}-{prefix}", lower=True)
    return state


def goal_domains_21(goal) -> tuple[str, ...]:
    """The domains a 2.1/2.4 ``goal`` names, sorted: its non-empty entries other than ``message``, ``topic``, ...
    (TRADE's ``domains`` of a dialogue); () when there is no goal object."""
    if not isinstance(goal, dict):
        return ()
    return tuple(sorted(str(k) for k, v in goal.items() if v and k not in GOAL_KEYS_NOT_DOMAINS))


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
    return Dialogue(dialogue_id, utterances, positions, states, goal_domains_21(record.get("goal")))


def _id_22(index: int, record) -> str:
    """The id of the ``index``-th 2.2 dialogue of a file, or a stand-in naming its position."""
    did = record.get("dialogue_id") if isinstance(record, dict) else None
    return clean_id(did) if isinstance(did, str) else f"#{index} (no 'dialogue_id')"


def _state_22(frames, where: str) -> dict[str, tuple[str, ...]]:
    """The state of a 2.2 user turn: the tracked slots set in its frames (one per service)."""
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
        _set_slots(state, slot_values, f"{where}: the frame of service {service!r}")
    return state


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
        states.append(_state_22(turn.get("frames"), where))
    services = record.get("services")  # 2.2 has no goal: the services of the dialogue stand for its domains
    services = sorted({s for s in services if isinstance(s, str)}) if isinstance(services, list) else []
    return Dialogue(dialogue_id, utterances, positions, states, tuple(services))


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
    """The dialogue ids of a valListFile/testListFile, one a line (``.json`` suffix optional), each listed once."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a list file; pass the valListFile or testListFile inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such list file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the list file ({e}); pass a readable UTF-8 text file") from None
    lines: dict[str, int] = {}  # id → its line number
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        dialogue_id = clean_id(line)
        if dialogue_id in lines:
            raise InputError(
                f"{path}: dialogue {dialogue_id!r} is listed twice (lines {lines[dialogue_id]} and {number}), which "
                "would repeat its question ids: remove the repeated line"
            )
        lines[dialogue_id] = number
    ids = list(lines)
    if not ids:
        raise InputError(f"{path}: lists no dialogue ids (expected one id a line, e.g. PMUL0698.json)")
    return ids
