"""ReCoRD: fill the `@placeholder` of a query with an entity of a news passage.

One example per query. The passage's `@highlight` bullet lines become sentences (T5's two
rewrites: after sentence-final punctuation the marker becomes a space, otherwise ". "). The
candidates are the passage's distinct entity strings in order of first mention (the official
spans are inclusive: `text[start:end + 1]`). T5 duplicates a query once per gold answer for
training; we keep one example whose target is the first gold answer, and score against all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..metrics import exact_match, max_over_answers, normalize_answer, token_f1
from .base import Task, gold_answers, make_example, require


def passage_sentences(text: str) -> str:
    text = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", text)
    return re.sub(r"\n@highlight\n", ". ", text)


def distinct(items) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class ReCoRD(Task):
    def _example(self, passage: str, entities: list[str], query: str, answers: list[str],
                 group) -> dict:
        if not entities:
            raise ValueError(f"{self.name}: query {group} has no entities to choose from")
        source = f"record query: {query} entities: {', '.join(entities)} passage: {passage_sentences(passage)}"
        target = answers[0] if answers else ""
        label = entities.index(target) if target in entities else -1
        return make_example(source, target, entities, answers, label, group)

    def examples(self, row: dict, train: bool) -> list[dict]:
        if isinstance(row.get("passage"), str):   # the hub's layout: one row per query
            require(self.name, row, ("passage", "query", "entities", "idx"))
            spans = row.get("entity_spans") or {}
            if isinstance(spans, dict):           # a Sequence of structs arrives as a dict of lists
                spans = [dict(zip(spans, values)) for values in zip(*spans.values())]
            entities = (distinct(s["text"] for s in sorted(spans, key=lambda s: s["start"]))
                        if spans else list(row["entities"]))
            return [self._example(row["passage"], entities, row["query"], distinct(row.get("answers") or []),
                                  row["idx"]["query"])]
        require(self.name, row, ("passage", "qas"))
        passage = row["passage"]
        require(self.name, passage, ("text", "entities"), where="passage")
        text = passage["text"]
        spans = sorted(passage["entities"], key=lambda e: e["start"])
        entities = distinct(text[e["start"]:e["end"] + 1] for e in spans)
        out = []
        for qa in row["qas"]:
            require(self.name, qa, ("query", "idx"), where="query")
            answers = distinct(a["text"] for a in qa.get("answers") or [])
            out.append(self._example(text, entities, qa["query"], answers, qa["idx"]))
        return out

    def metrics(self, predictions: list[str], examples: list[dict]) -> dict[str, float]:
        """Token F1 and exact match after SQuAD normalization, each the best over the query's
        gold answers, averaged over queries (one example per query)."""
        answers = gold_answers(self.name, predictions, examples)
        n = len(examples) or 1
        return {"f1": sum(max_over_answers(token_f1, p, a) for p, a in zip(predictions, answers)) / n,
                "em": sum(max_over_answers(exact_match, p, a) for p, a in zip(predictions, answers)) / n}

    def score(self, metrics: dict[str, float]) -> float:
        return (metrics["f1"] + metrics["em"]) / 2

    def is_valid(self, prediction: str, example: dict) -> bool:
        """A generated text names an answer when it is one of the passage's entities (compared
        after SQuAD normalization, as the metric compares)."""
        norm = normalize_answer(prediction)
        return bool(norm) and any(norm == normalize_answer(c) for c in example["candidates"])


RECORD = ReCoRD(name="record", dir_name="ReCoRD", hub_config="record")
