"""Generated short sentences, like a user's memories: the texts the embedding
bench sends and the base of the memory bench's synthetic vectors."""

from __future__ import annotations

import numpy as np

_SUBJECTS = (
    "My sister", "My brother", "My manager", "Our team lead", "My neighbour", "My daughter",
    "My son", "My partner", "The landlord", "My dentist", "Grandma", "My best friend",
    "The new intern", "My doctor", "My running coach", "The accountant", "My cousin",
    "Our teacher", "My flatmate", "Uncle Joe",
)  # fmt: skip
_VERBS = (
    "prefers", "is allergic to", "wants to learn about", "keeps forgetting", "recommended",
    "complained about", "is saving money for", "asked me about", "loves", "dislikes",
    "is worried about", "booked", "bought", "returned", "is reading about",
    "talked for hours about", "never mentions", "collects", "is planning", "cancelled",
)  # fmt: skip
_OBJECTS = (
    "green tea", "peanuts", "Italian cooking", "the quarterly report", "a trip to Lisbon",
    "jazz records", "the dentist appointment", "a new laptop", "vintage cameras",
    "the marathon in April", "spicy food", "the gym membership", "Spanish lessons",
    "the electricity bill", "a mountain bike", "board games", "the wedding in June",
    "oat milk", "science fiction novels", "the car insurance", "sourdough bread",
    "the flight to Tokyo", "yoga classes", "the kitchen renovation", "chess openings",
    "the tax return", "houseplants", "a rescue puppy", "the school play", "dark chocolate",
)  # fmt: skip
_TAILS = (
    "", " last week", " every morning", " since the spring", " before the holidays",
    " on weekends", " at the office", " after dinner", " this year", " during the summer",
    " again yesterday", " for a long time",
)  # fmt: skip


def make_sentences(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct short first-person-memory sentences (seeded, reproducible)."""
    capacity = len(_SUBJECTS) * len(_VERBS) * len(_OBJECTS) * len(_TAILS)
    if n > capacity // 4:
        raise ValueError(f"at most {capacity // 4} sentences, asked for {n}")
    seen: dict[str, None] = {}
    while len(seen) < n:
        s, v, o, t = (
            int(rng.integers(len(part))) for part in (_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
        )
        seen[f"{_SUBJECTS[s]} {_VERBS[v]} {_OBJECTS[o]}{_TAILS[t]}."] = None
    return list(seen)
