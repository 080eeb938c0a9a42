"""Spelling and letter counting, generated from a word list shipped with the package.

"How many r are in strawberry?" is hard for an LLM because it sees tokens, not letters. SpellingBee
answers by spelling the word out and counting by hand, then checks the count with a python call: a
habit worth teaching (RL can later learn which of the two to trust). SimpleSpelling is the condensed
skill underneath: spell a word letter by letter.

Each example is generated from `random.Random(index)` (test examples from a far-away seed range), so
example i is the same on every machine and no data is downloaded.
"""

from __future__ import annotations

import random
import string
from functools import cache
from importlib import resources

from taskray.tasks.common import Task
from taskray.tasks.gsm8k import extract_answer

TEST_SEED_OFFSET = 10_000_000  # far above any train size, so train and test examples never share a seed

# Ways to ask, in several languages: variety in the prompt, one skill behind it.
TEMPLATES = [
    "How many {letter} are in the word {word}",
    "How many {letter} are there in {word}",
    "Count the {letter} in {word}",
    "How many times does the letter {letter} occur in {word}",
    "What is the number of {letter} in {word}",
    "In the word {word}, how many {letter} do you see",
    "Tell me how many {letter} the word {word} has",
    "Count how often {letter} appears in {word}",
    "How often is {letter} in {word}",
    "{word}: how many {letter}",
    "¿Cuántas {letter} hay en la palabra {word}?",
    "¿Cuántas veces aparece la letra {letter} en {word}?",
    "Combien de {letter} y a-t-il dans {word}",
    "Compte les {letter} dans le mot {word}",
    "Wie viele {letter} hat das Wort {word}",
    "Wie oft kommt der Buchstabe {letter} in {word} vor",
    "{word}这个单词里有几个{letter}",
    "数一数{word}里有多少个{letter}",
    "{word}という単語に{letter}はいくつありますか",
    "{word}에는 {letter}가 몇 개 있나요",
]


@cache
def load_words() -> tuple[str, ...]:
    """The shipped word list (taskray/tasks/data/words.txt; see words.README.md there)."""
    text = resources.files("taskray.tasks").joinpath("data/words.txt").read_text(encoding="utf-8")
    return tuple(w for w in text.split() if w)


def spell(word: str) -> str:
    return f"{word}:{','.join(word)}"


class _WordTask(Task):
    """`size` examples generated from the word list, example i from its own seeded generator."""

    eval_type = "generative"

    def __init__(self, size: int = 1000, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"{type(self).__name__} split must be train|test, got {split!r}")
        self.size, self.split = size, split
        self.words = self.word_order(list(load_words()))
        self.source = {"generated": self.name, "split": split, "size": size, "words": len(self.words)}

    def word_order(self, words: list[str]) -> list[str]:
        return words

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        return random.Random(index if self.split == "train" else TEST_SEED_OFFSET + index)


class SpellingBee(_WordTask):
    name = "spellingbee"

    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        # usually a letter of the word; sometimes any letter, so "0" is a possible answer
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        template = rng.choice(TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()  # people skip the shift key
        q1, q2 = rng.choice(["", "'", '"']), rng.choice(["", "'", '"'])
        question = template.format(letter=f"{q1}{letter}{q1}", word=f"{q2}{word}{q2}")
        if rng.random() < 0.5 and not question.endswith("?"):
            question += "?"

        # the manual count: spell, then walk the letters keeping a running count
        lines = [
            f"We need the number of '{letter}' in '{word}'. First by hand.",
            "",
            "Spell the word:",
            spell(word),
            "",
            f"Count the '{letter}':",
        ]
        count = 0
        for i, char in enumerate(word, 1):
            if char == letter:
                count += 1
                lines.append(f"{i}:{char} hit! count={count}")  # no space before the letter: " a" != "a"
            else:
                lines.append(f"{i}:{char}")
        lines += ["", f"By hand: {count}."]
        parts = [
            {"type": "text", "text": "\n".join(lines)},
            {"type": "text", "text": "\n\nNow check with Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nPython agrees: {count}.\n\n#### {count}"},
        ]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]
        return {"messages": messages}

    def reference_answer(self, conversation: dict) -> str:
        return extract_answer(conversation["messages"][-1]["content"][-1]["text"]) or ""

    def evaluate(self, conversation: dict, assistant_response: str) -> int:
        """1 if the completion's `#### N` is the right count (graded like GSM8K)."""
        return int(extract_answer(assistant_response) == self.reference_answer(conversation))

    def reward(self, conversation: dict, assistant_response: str) -> float:
        return float(self.evaluate(conversation, assistant_response))


class SimpleSpelling(_WordTask):
    name = "simplespelling"

    def word_order(self, words: list[str]) -> list[str]:
        # a different order than SpellingBee's, so the two tasks don't drill the same words in step
        random.Random(42).shuffle(words)
        return words

    def get_example(self, index: int) -> dict:
        word = self.rng(index).choice(self.words)
        messages = [
            {"role": "user", "content": f"Spell the word: {word}"},
            {"role": "assistant", "content": spell(word)},
        ]
        return {"messages": messages}

    def evaluate(self, conversation: dict, assistant_response: str) -> bool:
        return assistant_response.strip() == conversation["messages"][-1]["content"]
