"""Writes the bundled RTE-format demo data (our own templated sentences, not SuperGLUE's).

Entailment: the hypothesis restates part of the premise; not_entailment: it swaps one word.
Run `python eval/demo_data/generate.py` to rebuild RTE/{train,val}.jsonl deterministically.
"""
import json
import random
from pathlib import Path

PEOPLE = ["Anna", "Ben", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena"]
PLACES = ["the library", "the market", "the station", "the harbour", "the museum", "the garden",
          "the bakery", "the school", "the stadium", "the bridge"]
THINGS = ["a red bicycle", "an old map", "a blue umbrella", "a wooden chair", "a small radio",
          "a paper kite", "a silver watch", "a green bottle", "a heavy box", "a new camera"]
DAYS = ["on Monday", "on Tuesday", "on Friday", "last weekend", "yesterday", "this morning"]


def example(rng: random.Random, idx: int) -> dict:
    who, other = rng.sample(PEOPLE, 2)
    place, other_place = rng.sample(PLACES, 2)
    thing, other_thing = rng.sample(THINGS, 2)
    day = rng.choice(DAYS)
    premise = f"{who} bought {thing} at {place} {day}, and then walked home with a friend."
    entailed = rng.random() < 0.5
    kind = rng.randrange(3)
    if entailed:
        hypothesis = [f"{who} bought {thing}.", f"{who} was at {place}.", f"Someone bought {thing} {day}."][kind]
    else:
        hypothesis = [f"{other} bought {thing}.", f"{who} was at {other_place}.", f"Someone bought {other_thing} {day}."][kind]
    return {"premise": premise, "hypothesis": hypothesis, "idx": idx,
            "label": "entailment" if entailed else "not_entailment"}


def main() -> None:
    rng = random.Random(20261125)
    out = Path(__file__).parent / "RTE"
    out.mkdir(exist_ok=True)
    for split, n in (("train", 160), ("val", 48)):
        with (out / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                f.write(json.dumps(example(rng, i)) + "\n")


if __name__ == "__main__":
    main()
