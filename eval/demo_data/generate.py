"""Writes the bundled demo data: small sets in the official SuperGLUE layout for all eight tasks,
made of our own templated sentences (nothing is copied from SuperGLUE).

Each set has a pattern a small model can learn, so sweeps and tests can run on every task without
downloading anything; BoolQ's, the default run's, is learnt only through a real model's English. Run
`python eval/demo_data/generate.py` to rebuild
<Task>/{train,val}.jsonl deterministically (every task has its own fixed random seed; RTE keeps
the seed and sizes it always had, so its files do not change).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent
SIZES = {"train": 40, "val": 16}

PEOPLE = ["Anna", "Ben", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena"]
PLACES = ["the library", "the market", "the station", "the harbour", "the museum", "the garden",
          "the bakery", "the school", "the stadium", "the bridge"]
THINGS = ["a red bicycle", "an old map", "a blue umbrella", "a wooden chair", "a small radio",
          "a paper kite", "a silver watch", "a green bottle", "a heavy box", "a new camera"]
DAYS = ["on Monday", "on Tuesday", "on Friday", "last weekend", "yesterday", "this morning"]


def write(task_dir: str, rows_by_split: dict[str, list[dict]]) -> None:
    (OUT / task_dir).mkdir(exist_ok=True)
    for split, rows in rows_by_split.items():
        with (OUT / task_dir / f"{split}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def splits(make, seed: int, sizes: dict[str, int] = SIZES) -> dict[str, list[dict]]:
    """Rows for each split from one generator `make(rng, idx)`, idx counting from 0 per split."""
    rng = random.Random(seed)
    return {split: [make(rng, i) for i in range(n)] for split, n in sizes.items()}


# --- RTE: the hypothesis restates part of the premise, or swaps one word ---------------------

def rte(rng: random.Random, idx: int) -> dict:
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
        hypothesis = [f"{other} bought {thing}.", f"{who} was at {other_place}.",
                      f"Someone bought {other_thing} {day}."][kind]
    return {"premise": premise, "hypothesis": hypothesis, "idx": idx,
            "label": "entailment" if entailed else "not_entailment"}


# --- BoolQ: is the review positive? Held-out reviews use words training never shows -----------
# The default run's task: a pretrained backbone answers through what it knows of English, so a prompt
# trained on "superb" and "dreadful" should also call "exquisite" positive and "shoddy" negative.
# A random backbone cannot; the report's untrained -> trained accuracy shows the difference.

REVIEW_WORDS = {
    "train": {
        True: "good great excellent wonderful delightful pleasant lovely superb fantastic brilliant amazing "
              "marvelous charming enjoyable splendid beautiful perfect outstanding terrific fabulous cheerful "
              "gorgeous impressive magnificent remarkable exceptional glorious pleasing satisfying admirable".split(),
        False: "bad terrible awful horrible dreadful unpleasant nasty poor disgusting boring dull mediocre "
               "disappointing miserable pathetic lousy atrocious abysmal appalling dismal horrid gross tedious "
               "bland ugly annoying painful tragic rotten sloppy".split()},
    "val": {
        True: "elegant refreshing sublime exquisite stellar heavenly joyful uplifting graceful flawless delicious "
              "friendly helpful kind happy nice awesome thrilling inspiring wholesome comfortable dazzling "
              "stunning lovable generous".split(),
        False: "clumsy rude hostile filthy gloomy depressing shoddy tasteless inferior worthless useless "
               "unbearable offensive frightful grim sad stale cheap broken weak messy noisy harsh sour "
               "bitter".split()},
}
REVIEWS = ["The movie was {}.", "Our dinner last night was {}.", "I thought the service was {}.",
           "The hotel room looked {}."]
REVIEWS_PER_WORD = {"train": 4, "val": 2}


def boolq_reviews(seed: int) -> dict[str, list[dict]]:
    """Every word of a split, each in a few review sentences, shuffled; no val word occurs in train."""
    rng = random.Random(seed)
    rows_by_split = {}
    for split, words in REVIEW_WORDS.items():
        pairs = [(label, word) for label, listed in words.items() for word in listed
                 for _ in range(REVIEWS_PER_WORD[split])]
        rng.shuffle(pairs)
        rows_by_split[split] = [{"question": "was the review positive", "idx": idx, "label": label,
                                 "passage": rng.choice(REVIEWS).format(word)}
                                for idx, (label, word) in enumerate(pairs)]
    return rows_by_split


# --- CB: the speaker's commitment (sure / doubt / wonder) decides the class -----------------

CB_FRAMES = {
    "entailment": ["I am sure that {c}.", "Everyone knows that {c}.", "I saw with my own eyes that {c}."],
    "contradiction": ["I really doubt that {c}.", "It is not true that {c}.",
                      "Nobody believes that {c}, because it is false."],
    "neutral": ["I wonder whether {c}.", "Maybe {c}, maybe not.", "I have no idea if {c}."],
}


def cb(rng: random.Random, idx: int) -> dict:
    who, speaker = rng.sample(PEOPLE, 2)
    clause = f"{who} left {rng.choice(THINGS)} at {rng.choice(PLACES)}"
    label = rng.choice(list(CB_FRAMES))
    premise = f"{speaker} said: \"{rng.choice(CB_FRAMES[label]).format(c=clause)}\""
    return {"premise": premise, "hypothesis": clause[0].upper() + clause[1:] + ".", "idx": idx, "label": label}


# --- COPA: everyday cause -> effect pairs ----------------------------------------------------

CAUSE_EFFECT = [
    ("The power went out.", "The room went dark."), ("It rained all night.", "The streets were wet."),
    ("I dropped the glass.", "The glass broke."), ("The baby was hungry.", "The baby cried."),
    ("She studied every evening.", "She passed the exam."), ("The sun came out.", "The snow melted."),
    ("He forgot his umbrella.", "He got wet on the way home."), ("The water boiled.", "The kettle whistled."),
    ("The dog saw a cat.", "The dog barked."), ("I set an alarm.", "I woke up on time."),
    ("The road was icy.", "The car slid."), ("The shop had a sale.", "The shop was crowded."),
    ("He ran a long race.", "His legs were sore."), ("The milk was left out.", "The milk went sour."),
    ("The wind blew hard.", "The old tree fell over."), ("She turned on the fan.", "The room cooled down."),
]


def copa(rng: random.Random, idx: int) -> dict:
    (cause, effect), (other_cause, other_effect) = rng.sample(CAUSE_EFFECT, 2)
    question = rng.choice(["cause", "effect"])
    premise, right, wrong = (effect, cause, other_cause) if question == "cause" else (cause, effect, other_effect)
    label = rng.randrange(2)
    choices = (right, wrong) if label == 0 else (wrong, right)
    return {"premise": premise, "choice1": choices[0], "choice2": choices[1], "question": question,
            "idx": idx, "label": label}


# --- MultiRC: a short paragraph with marked-up sentences, two questions, several answers -----

def multirc(rng: random.Random, idx: int) -> dict:
    who, friend = rng.sample(PEOPLE, 2)
    first, second, never = rng.sample(PLACES, 3)
    thing, other_thing, third_thing = rng.sample(THINGS, 3)
    sentences = [f"{who} bought {thing} at {first} {rng.choice(DAYS)}.",
                 f"Then {who} walked to {second} with {friend}.",
                 f"{friend} did not buy anything."]
    text = "".join(f"<b>Sent {i}: </b>{s}<br>" for i, s in enumerate(sentences, 1))
    answer_idx = iter(range(1000))

    def answers(pairs):
        pairs = list(pairs)
        rng.shuffle(pairs)
        return [{"text": t, "idx": next(answer_idx), "label": int(ok)} for t, ok in pairs]

    questions = [
        {"question": f"What did {who} buy?", "idx": 0,
         "answers": answers([(thing, True), (other_thing, False), (third_thing, False)])},
        {"question": f"Which places did {who} visit?", "idx": 1,
         "answers": answers([(first, True), (second, True), (never, False)])},
    ]
    return {"idx": idx, "version": 1.1, "passage": {"text": text, "questions": questions}}


# --- ReCoRD: who did what, with a company that has a long and a short name -------------------

CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Tunis", "Riga", "Lima", "Accra"]
COMPANIES = [("Northwind Trading Company", "Northwind"), ("Bluefield Rail Services", "Bluefield"),
             ("Copperleaf Foods", "Copperleaf"), ("Harbourline Shipping", "Harbourline"),
             ("Greystone Energy", "Greystone"), ("Silverpine Media", "Silverpine")]


def record(rng: random.Random, idx: int) -> dict:
    boss, guest = rng.sample(PEOPLE, 2)
    city, other_city = rng.sample(CITIES, 2)
    company, short = rng.choice(COMPANIES)
    text = (f"{boss}, the head of {company}, met {guest} in {city} on Monday. {short} plans to open "
            f"an office in {other_city} next year, {boss} said.\n@highlight\n{guest} travelled to {city}"
            f"\n@highlight\n{short} will grow \"quickly\"")
    def mentions(name: str) -> list[int]:
        """Start of every mention, except the short name inside the long one."""
        starts, start = [], text.find(name)
        while start >= 0:
            if not (name == short and text.startswith(company, start)):
                starts.append(start)
            start = text.find(name, start + 1)
        return starts

    entities = [{"start": s, "end": s + len(name) - 1}      # the official spans' end is inclusive
                for name in (boss, company, guest, city, short, other_city) for s in mentions(name)]
    queries = [(f"@placeholder met {guest} in {city}.", [boss]),
               (f"{guest} met the head of @placeholder.", [company, short]),
               (f"The new office of {short} will be in @placeholder.", [other_city])]
    qas = []
    for j in sorted(rng.sample(range(len(queries)), 2)):
        query, gold = queries[j]
        qas.append({"query": query, "idx": idx * 10 + j,
                    "answers": [{"start": mentions(g)[0], "end": mentions(g)[0] + len(g) - 1, "text": g}
                                for g in gold]})
    return {"source": "lrpt demo", "idx": idx, "passage": {"text": text, "entities": entities}, "qas": qas}


# --- WiC: six ambiguous words, three sentences per sense -------------------------------------

SENSES = {
    "bank": (["We sat on the bank of the river.", "The boat drifted toward the muddy bank.",
              "Reeds grew along the bank."],
             ["She opened an account at the bank.", "The bank approved the loan.", "He works at a bank downtown."]),
    "bat": (["A bat flew out of the cave.", "The bat hangs upside down all day.", "We saw a bat at dusk."],
            ["He swung the bat hard.", "She bought a new bat for the match.", "The bat cracked in half."]),
    "light": (["Turn on the light, please.", "The light in the hall is broken.", "A light shone in the window."],
              ["The box is light enough to carry.", "She packed a light bag.", "This jacket is very light."]),
    "ring": (["He gave her a gold ring.", "The ring fits my finger.", "She lost her ring at the beach."],
             ["I heard the phone ring twice.", "Did the bell ring yet?", "The doorbell will ring soon."]),
    "spring": (["The flowers bloom in spring.", "We travel every spring.", "Spring came early this year."],
               ["The spring in the mattress broke.", "A metal spring holds the lid.",
                "Replace the spring in the clock."]),
    "match": (["Light the match carefully.", "He struck a match in the dark.", "The match burned his fingers."],
              ["We watched the match on television.", "Our team won the match.", "The match ended in a draw."]),
}


def wic(rng: random.Random, idx: int) -> dict:
    word = rng.choice(list(SENSES))
    same = rng.random() < 0.5
    sense1 = rng.randrange(2)
    sense2 = sense1 if same else 1 - sense1
    s1 = rng.choice(SENSES[word][sense1])
    s2 = rng.choice([s for s in SENSES[word][sense2] if s != s1])
    start1, start2 = s1.lower().index(word), s2.lower().index(word)
    return {"word": word, "sentence1": s1, "sentence2": s2, "idx": idx, "label": same,
            "start1": start1, "end1": start1 + len(word), "start2": start2, "end2": start2 + len(word),
            "version": 1.1}


# --- WSC: two people of different genders; the pronoun's gender picks the referent -----------

WOMEN = ["Anna", "Dara", "Farah", "Hana", "Lena"]
MEN = ["Ben", "Emil", "Goran", "Ivo", "Kemal"]
WSC_TEMPLATES = [   # {a} {b}: the two people; {s}: subject pronoun, {o}: object pronoun
    "{a} called {b} because {s} needed a ride to the station.",
    "{a} lent {b} a book after {s} asked politely.",
    "{a} waited for {b} at the gate, but {s} was late.",
    "{a} met {b} at the market and gave the keys to {o}.",
    "When {a} visited {b} in spring, {s} brought flowers.",
]


def wsc(rng: random.Random, idx: int) -> dict:
    a, b = rng.choice(WOMEN), rng.choice(MEN)
    if rng.random() < 0.5:
        a, b = b, a
    referent = rng.choice([a, b])
    female = referent in WOMEN
    template = rng.choice(WSC_TEMPLATES)
    pronoun = ("she" if female else "he") if "{s}" in template else ("her" if female else "him")
    text = template.format(a=a, b=b, s=pronoun, o=pronoun)
    words = text.split(" ")
    positive = rng.random() < 0.5
    noun = referent if positive else (b if referent == a else a)
    noun_index = next(i for i, w in enumerate(words) if w.rstrip(",.") == noun)
    pronoun_index = next(i for i, w in enumerate(words) if w.rstrip(",.") == pronoun)
    return {"text": text, "idx": idx, "label": positive,
            "target": {"span1_index": noun_index, "span1_text": noun,
                       "span2_index": pronoun_index, "span2_text": pronoun}}


def main() -> None:
    write("RTE", splits(rte, 20261125, {"train": 160, "val": 48}))
    write("BoolQ", boolq_reviews(1))
    write("CB", splits(cb, 2))
    write("COPA", splits(copa, 3))
    write("MultiRC", splits(multirc, 4))
    write("ReCoRD", splits(record, 5))
    write("WiC", splits(wic, 6))
    write("WSC", splits(wsc, 7))


if __name__ == "__main__":
    main()
