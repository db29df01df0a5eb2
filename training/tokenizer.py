"""A CLIP tokenizer over a small word vocabulary, written to disk so it round-trips like a real one.

Every vocabulary word becomes one token (``red</w>``), built by BPE merges from its characters, so the CLIP
tokenizer code path (start token at position 0, end token as padding) is exactly the one SD models use.
Unknown words fall back to single characters, which are in the vocabulary too.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def prompt_words(text: str) -> list[str]:
    """The pieces CLIP's pre-tokenizer splits lowercase text into (letter runs, single digits, punctuation runs):
    what a word-level vocabulary must hold, and what the vocabulary check looks up."""
    return _WORD.findall(text.lower())


def _merges_for(word: str) -> list[tuple[str, str]]:
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    merges = []
    while len(symbols) > 1:
        merges.append((symbols[0], symbols[1]))
        symbols = [symbols[0] + symbols[1]] + symbols[2:]
    return merges


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges like the CLIP tokenizer: repeatedly merge (every occurrence of) the best-ranked pair."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks[p], p) for p in zip(symbols, symbols[1:]) if p in ranks]
        if not pairs:
            break
        _, (a, b) = min(pairs)
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == a and symbols[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _repair_merges(words: list[str], merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Append merges until every word is one token.

    Words that share a pair (``an`` in "and" and "orange") can otherwise stall: the shared pair outranks
    the other word's chain, and BPE stops at pieces such as ``or an g e</w>``.
    """
    merges = list(merges)
    changed = True
    while changed:
        changed = False
        ranks = {pair: i for i, pair in enumerate(merges)}
        for word in words:
            pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                merges.append(pair)
                ranks[pair] = len(merges) - 1
                pieces = _bpe(pieces, ranks)
                changed = True
    return merges


def write_word_tokenizer(words: list[str], directory: str | Path, max_length: int = 77) -> Path:
    """Write ``vocab.json``/``merges.txt``/configs for ``words`` into ``directory`` and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(set(string.ascii_lowercase + string.digits) | {c for w in words for c in w.lower()})
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words}):
        for pair in _merges_for(word):
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    merges = _repair_merges(sorted({w.lower() for w in words}), merges)
    for pair in merges:
        vocab.setdefault(pair[0] + pair[1], len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return directory


def load_tokenizer(directory: str | Path) -> CLIPTokenizer:
    directory = Path(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    return CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        model_max_length=config.get("model_max_length", 77),
        pad_token=EOS,
    )
