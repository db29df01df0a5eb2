"""Map prompt words to cross-attention columns through the tokenizer's own token strings.

Columns are positions in the padded token sequence, so position 0 is the start token: in "a photo of a bird"
the word "bird" is column 5, not 4. Working from the token strings (not from a whitespace split of the prompt)
keeps columns right for multi-token words and for prompt weighting syntax such as "(bird:1.2)".
"""

from __future__ import annotations

SPECIAL = {"<|startoftext|>", "<|endoftext|>", "<pad>", "<s>", "</s>", "[PAD]", "[CLS]", "[SEP]"}
WORD_END = "</w>"


def _clean(token: str) -> str:
    return token[: -len(WORD_END)] if token.endswith(WORD_END) else token


def word_spans(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Group token positions into words: ``[("a", [1]), ("photo", [2]), ...]``, special tokens skipped."""
    spans: list[tuple[str, list[int]]] = []
    pieces: list[str] = []
    positions: list[int] = []
    for index, token in enumerate(tokens):
        if token in SPECIAL:
            if pieces:
                spans.append(("".join(pieces), positions))
                pieces, positions = [], []
            continue
        pieces.append(_clean(token))
        positions.append(index)
        if token.endswith(WORD_END):
            spans.append(("".join(pieces), positions))
            pieces, positions = [], []
    if pieces:
        spans.append(("".join(pieces), positions))
    return spans


def words_of(tokens: list[str]) -> list[str]:
    return [word for word, _ in word_spans(tokens)]


def find_word_positions(tokens: list[str], words: str) -> list[int]:
    """Columns of one or several comma-separated words, e.g. ``"bird"`` or ``"human, arms, legs"``.

    A multi-token word gives all its columns. Raises ``ValueError`` naming the prompt's words when a word is
    not in the prompt.
    """
    wanted = [w.strip().lower() for w in words.split(",") if w.strip()]
    if not wanted:
        raise ValueError("No word given: type the object word from the prompt, e.g. 'bird'.")
    spans = word_spans(tokens)
    positions: list[int] = []
    for word in wanted:
        hits = [pos for text, pos in spans if text.lower() == word]
        if not hits:
            available = ", ".join(repr(text) for text, _ in spans) or "(none: the prompt is empty)"
            raise ValueError(
                f"The word {word!r} is not in the prompt. The prompt's words are: {available}. "
                "Type one of them (comma-separate several to sum their maps)."
            )
        for pos in hits:
            positions.extend(pos)
    return sorted(set(positions))
