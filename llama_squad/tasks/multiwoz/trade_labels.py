"""TRADE's label normalization of MultiWOZ 2.1 slot values: the spellings that 2.1 papers score their JGA in.

Source: TRADE (Wu et al., ACL 2019; github.com/jasonwu0731/trade-dst, MIT licence). Its ``create_data.py`` turns
each belief-state value into a label (``get_summary_bstate``, then ``normalize(value, clean_value=False)`` with the
word table ``utils/mapping.pair`` from budzianowski/multiwoz, MIT licence), and its ``utils/fix_label.py``
(``fix_general_label_error``) corrects the labels before training and scoring. The MultiWOZ repository asks DST
experiments to follow TRADE's processing and scoring scripts, and later trackers carry a copy of ``fix_label.py``
(clovaai/som-dst, henryhungle/NADST, smartyfh/DST-STAR, guojinyu88/DiCoS-master): MultiWOZ 2.1 JGAs are reported on
these labels. The rules are written here from those files, in our own code, in the order TRADE applies them (the
word tables are TRADE's data); each step of :func:`normalize_label_trade` names its rule.

Where this differs from TRADE, and why:

- TRADE normalizes the gold labels only (its model generates in their spelling); here the same function is applied
  to the gold and the predicted values, so that a model writing either spelling scores the same;
- the value is first put in our strict form (lower case, whitespace collapsed, ``9:30`` → ``09:30``), so that a
  value right under strict matching is right here too;
- "not set" is one thing on both sides: TRADE's scorer keeps a gold "none" as a value that no prediction can match,
  here "none" is not set; the four "dontcare" spellings count for every slot (TRADE: the ``semi`` slots only);
- words are replaced one by one: TRADE replaces ``" two "`` in the padded text, which skips the second of two
  repeated words ("restaurant two two" → "restaurant 2 two"); here both become "2" and then "22", the same as
  TRADE's label applied twice, so that the normalization of a normalized value is itself;
- 2.1's ``a|b`` values are read as alternatives (our readers), each normalized; TRADE keeps ``a|b`` as one label;
- ``fix_label.py``'s rule for ``hotel-star`` ("3 star hotel" → "3") names a slot TRADE does not have (its slot is
  ``hotel-stars``), so it never applies there: left out here as well.
"""

import functools
import re

from llama_squad.tasks.multiwoz.schema import DONTCARE, DONTCARE_GOLD_VALUES, EMPTY_GOLD_VALUES

# TRADE's utils/mapping.pair (from budzianowski/multiwoz): whole words replaced in every value. The contractions with
# 's never apply (the 's is split off before, by the rule of _POSSESSIVE), as in TRADE.
TRADE_WORDS = {
    "it's": "it is", "don't": "do not", "doesn't": "does not", "didn't": "did not", "you'd": "you would",
    "you're": "you are", "you'll": "you will", "i'm": "i am", "they're": "they are", "that's": "that is",
    "what's": "what is", "couldn't": "could not", "i've": "i have", "we've": "we have", "can't": "cannot",
    "i'd": "i would", "aren't": "are not", "isn't": "is not", "wasn't": "was not", "weren't": "were not",
    "won't": "will not", "there's": "there is", "there're": "there are",
    "locations": "location -s", "areas": "area -s", "uses": "use -s", "dimensions": "dimension -s",
    "driverange": "drive range", "includes": "include -s", "computers": "computer -s", "machines": "machine -s",
    "ratings": "rating -s", "constraints": "constraint -s", "batteryrating": "battery rating",
    "requirements": "requirement -s", "specifications": "specification -s", "harddrive": "hard drive",
    "batterylife": "battery life", "hours": "hour -s",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "anywhere": "any where",
}  # fmt: skip
TRADE_PHRASES = {". .": ".", "good bye": "goodbye"}  # the two entries of mapping.pair that span two words

# fix_label.py's GENERAL_TYPO: whole values replaced, whatever the slot ("none": not set).
TRADE_TYPOS = {
    # type
    "guesthouse": "guest house", "guesthouses": "guest house", "guest": "guest house",
    "mutiple sports": "multiple sports", "sports": "multiple sports", "mutliple sports": "multiple sports",
    "swimmingpool": "swimming pool", "concerthall": "concert hall", "concert": "concert hall",
    "pool": "swimming pool", "night club": "nightclub", "mus": "museum", "ol": "architecture",
    "colleges": "college", "coll": "college", "architectural": "architecture", "musuem": "museum",
    "churches": "church",
    # area
    "center": "centre", "center of town": "centre", "near city center": "centre", "in the north": "north",
    "cen": "centre", "east side": "east", "east area": "east", "west part of town": "west", "ce": "centre",
    "town center": "centre", "centre of cambridge": "centre", "city center": "centre", "the south": "south",
    "scentre": "centre", "town centre": "centre", "in town": "centre", "north part of town": "north",
    "centre of town": "centre", "cb30aq": "none",
    # price
    "mode": "moderate", "moderate -ly": "moderate", "mo": "moderate",
    # day
    "next friday": "friday", "monda": "monday",
    # parking and internet
    "free parking": "free", "free internet": "yes",
    # stars
    "4 star": "4", "4 stars": "4", "0 star rarting": "none",
    # others
    "y": "yes", "any": "dontcare", "n": "no", "does not care": "dontcare", "not men": "none", "not": "none",
    "not mentioned": "none", "": "none", "not mendtioned": "none", "3 .": "3", "does not": "no", "fun": "none",
    "art": "none",
}  # fmt: skip

# fix_label.py's slot-specific rules. Values that do not belong to the slot → not set:
TRADE_MISPLACED = {
    "hotel-type": frozenset({"nigh", "moderate -ly priced", "bed and breakfast", "centre", "venetian", "intern",
                             "a cheap -er hotel"}),
    "hotel-internet": frozenset({"4"}),
    "hotel-pricerange": frozenset({"2"}),
    "attraction-type": frozenset({"gastropub", "la raza", "galleria", "gallery", "science", "m"}),
}  # fmt: skip
TRADE_HOTEL_TYPE = frozenset({"hotel with free parking and free wifi", "4", "3 star hotel"})  # → "hotel"
TRADE_AREAS = {"no": "north", "we": "west", "cent": "centre"}  # in area slots
TRADE_DAYS = {"we": "wednesday", "no": "none"}  # in day slots
# Places outside the slot's ontology → not set.
TRADE_OUT_OF_ONTOLOGY = {
    "restaurant-area": frozenset({"stansted airport", "cambridge", "silver street"}),
    "attraction-area": frozenset({"norwich", "ely", "museum", "same area as hotel"}),
}

_WHITESPACE = re.compile(r"\s+")
_SHORT_TIME = re.compile(r"^(\d):(\d{2})$")
_BED_AND_BREAKFAST = re.compile(r"b&b|b and b")
_REMOVED = re.compile(r"[\"<>@()]")
_PUNCTUATION = re.compile(r"(?<![0-9])[?.,!]|[?.,!](?![0-9])")  # not between two digits
_POSSESSIVE = re.compile(r"(?<! )'s")
_LOOSE_APOSTROPHE = re.compile(r"^'|'$|'(?=\s)|(?<=\s)'")


def _strict(value: str) -> str:
    """Our strict form (scoring.normalize_value): lower case, whitespace collapsed, ``H:MM`` → ``HH:MM``."""
    text = _WHITESPACE.sub(" ", value.lower()).strip()
    return _SHORT_TIME.sub(r"0\1:\2", text)


def _not_set_or_dontcare(text: str) -> str | None:
    """ "" for the spellings of "not set", ``dontcare`` for those of "dontcare", None for any other value."""
    if text in EMPTY_GOLD_VALUES or text == "?":
        return ""
    if text in DONTCARE_GOLD_VALUES:
        return DONTCARE
    return None


def _trade_text(text: str) -> str:
    """TRADE's ``normalize(value, clean_value=False)`` (create_data.py): rules 2a-2g of normalize_label_trade."""
    text = _BED_AND_BREAKFAST.sub("bed and breakfast", text)  # 2a
    text = text.replace("\u2018", "'").replace("\u2019", "'")  # 2b
    text = text.replace(";", ",").replace("/", " and ").replace("-", " ")  # 2c
    text = _REMOVED.sub("", text)
    text = _PUNCTUATION.sub(r" \g<0> ", text)  # 2d
    text = _LOOSE_APOSTROPHE.sub(" ", _POSSESSIVE.sub(" 's", text))  # 2e
    text = " ".join(text.split())
    for phrase, replacement in TRADE_PHRASES.items():  # 2f
        text = re.sub(rf"(?<!\S){re.escape(phrase)}(?!\S)", replacement, text)
    words = " ".join(TRADE_WORDS.get(word, word) for word in text.split()).split()
    joined: list[str] = []  # 2g
    for word in words:
        if joined and word.isdigit() and joined[-1].isdigit():
            joined[-1] += word
        else:
            joined.append(word)
    return " ".join(joined)


def _trade_fix(text: str, slot: str) -> str:
    """fix_label.py's ``fix_general_label_error`` for one slot, rules 3a-3e of :func:`normalize_label_trade`."""
    text = TRADE_TYPOS.get(text, text)  # 3a
    if text in TRADE_MISPLACED.get(slot, ()) or (
        ("area" in slot and text == "moderate") or ("day" in slot and text == "t")
    ):  # 3b
        text = "none"
    elif slot == "hotel-type" and text in TRADE_HOTEL_TYPE:  # 3c
        text = "hotel"
    elif "area" in slot:  # 3d
        text = TRADE_AREAS.get(text, text)
    elif "day" in slot:
        text = TRADE_DAYS.get(text, text)
    elif "price" in slot and text == "ch":
        text = "cheap"
    elif "internet" in slot and text == "free":
        text = "yes"
    if text in TRADE_OUT_OF_ONTOLOGY.get(slot, ()):  # 3e
        text = "none"
    return text


@functools.lru_cache(maxsize=65536)
def normalize_label_trade(value: str, slot: str) -> str:
    """The TRADE label of ``value`` in ``slot`` (a name such as ``hotel-type``); ``""`` when it means "not set".

    Rules, in order (sources in the module docstring; each example is a test):

    1. Our strict form (lower case, whitespace collapsed, ``9:30`` → ``09:30``); "", "?", "none", "not mentioned"
       → not set; "dont care", "don't care", "do n't care", "do not care" → "dontcare" (``get_summary_bstate``).
    2. TRADE's text normalization (``create_data.py``'s ``normalize`` without value cleaning):
       a. "b&b" and "b and b" → "bed and breakfast" (anywhere in the value, as TRADE);
       b. curly apostrophes → "'";
       c. ";" → ","; "/" → " and "; "-" → " "; the characters ``" < > @ ( )`` removed ("alpha-milton" →
          "alpha milton");
       d. "?", ".", ",", "!" set apart by spaces, unless between two digits ("st. john's" → "st . john's", "3.5"
          unchanged);
       e. "'s" set apart, then an apostrophe at either end or beside a space dropped ("christ's college" → "christ
          s college");
       f. whole words replaced by ``utils/mapping.pair`` (:data:`TRADE_WORDS`, :data:`TRADE_PHRASES`): number
          words one..twelve → digits, contractions spelled out ("don't" → "do not"), "anywhere" → "any where";
       g. runs of spaces collapsed, and adjacent all-digit words joined ("restaurant one seven" → "restaurant 1 7"
          → "restaurant 17").
    3. TRADE's label fixes (``fix_label.py``):
       a. whole values replaced (:data:`TRADE_TYPOS`): "guesthouse" → "guest house", "night club" → "nightclub",
          "concerthall" → "concert hall", "swimmingpool" / "pool" → "swimming pool", "center" → "centre", "any" →
          "dontcare", "4 stars" → "4", "free internet" → "yes", ...;
       b. values that do not belong to the slot → not set (:data:`TRADE_MISPLACED`: hotel-type "bed and breakfast",
          attraction-type "gallery", hotel-internet "4", ...; "moderate" in an area slot, "t" in a day slot);
       c. hotel-type "hotel with free parking and free wifi", "4", "3 star hotel" → "hotel";
       d. area slots: "no" → "north", "we" → "west", "cent" → "centre"; day slots: "we" → "wednesday", "no" → not
          set; price range: "ch" → "cheap"; internet: "free" → "yes" (parking keeps "free" apart from "yes");
       e. places outside the slot's ontology → not set (:data:`TRADE_OUT_OF_ONTOLOGY`: restaurant-area
          "cambridge", attraction-area "ely", ...).
    4. "none" (what rules 3a, 3b, 3d and 3e write for "not set") → not set; the dontcare spellings of rule 1 once
       more (rule 2 can make one: "don’t care" → "do not care").

    The normalization of a normalized value is itself (tested on every value of the 2.1 dev and test sets).
    """
    text = _strict(value)
    special = _not_set_or_dontcare(text)
    if special is not None:
        return special
    text = _trade_fix(_trade_text(text), slot)
    special = _not_set_or_dontcare(text)
    return text if special is None else special
