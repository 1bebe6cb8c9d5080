"""MultiWOZ's 5 domains and 30 tracked slots: names, descriptions, allowed values, and gold spellings of unset."""

from dataclasses import dataclass
from pathlib import Path

from llama_squad.files import InputError, read_json
from llama_squad.tasks.common import json_type

# The 5 domains and their 30 tracked slots (MultiWOZ 2.2 names): the standard DST evaluation set. Hospital, police
# and bus are left out, as in the literature.
DOMAINS = ("attraction", "hotel", "restaurant", "taxi", "train")
SLOT_NAMES = (
    "attraction-area", "attraction-name", "attraction-type",
    "hotel-area", "hotel-bookday", "hotel-bookpeople", "hotel-bookstay", "hotel-internet", "hotel-name",
    "hotel-parking", "hotel-pricerange", "hotel-stars", "hotel-type",
    "restaurant-area", "restaurant-bookday", "restaurant-bookpeople", "restaurant-booktime", "restaurant-food",
    "restaurant-name", "restaurant-pricerange",
    "taxi-arriveby", "taxi-departure", "taxi-destination", "taxi-leaveat",
    "train-arriveby", "train-bookpeople", "train-day", "train-departure", "train-destination", "train-leaveat",
)  # fmt: skip

DONTCARE = "dontcare"
# Gold values that mean "not set" in MultiWOZ 2.1/2.4 belief states (compared lower-cased).
EMPTY_GOLD_VALUES = frozenset({"", "none", "not mentioned"})
# Gold spellings of "dontcare" (compared lower-cased) read as "dontcare".
DONTCARE_GOLD_VALUES = frozenset({"dontcare", "dont care", "don't care", "do n't care", "do not care"})

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
