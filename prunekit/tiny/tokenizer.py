"""A CLIP tokenizer built from the shapes grammar, with no downloaded vocabulary.

The vocabulary holds the 256 byte-level symbols (alone and word-final, as CLIP's does), one token per
grammar word, and the intermediate tokens of the merges that build them. Merges are learned by
plain byte-pair encoding over the grammar words, so applying them in rank order rebuilds each word
as a single token; any other word falls back to smaller pieces, down to single bytes, never to an
unknown token.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from prunekit.shapes import data as shapes

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"
MODEL_MAX_LENGTH = 32


def grammar_words() -> list[str]:
    """Every word a shapes caption can use, sorted."""
    captions = [attrs.caption() for attrs in shapes.all_combinations()]
    return sorted({word for caption in captions for word in caption.split()})


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first (ties by the pair's text), until each word is one token."""
    pieces = {word: [*word[:-1], word[-1] + WORD_END] for word in words}
    merges = []
    while True:
        pairs = Counter(pair for seq in pieces.values() for pair in zip(seq, seq[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, seq in pieces.items():
            merged, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = merged


def vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Bytes, word-final bytes, merged tokens in merge order, then the two special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [symbol + WORD_END for symbol in alphabet] + [a + b for a, b in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_tokenizer(model_max_length: int = MODEL_MAX_LENGTH) -> CLIPTokenizer:
    """The shapes CLIP tokenizer, padding with the end token to `model_max_length` as SD-v1.x's does."""
    merges = learn_merges(grammar_words())
    return CLIPTokenizer(vocab=vocabulary(merges), merges=merges,
                         model_max_length=model_max_length)


def save_tokenizer(tokenizer: CLIPTokenizer, directory: str) -> None:
    """`save_pretrained` plus CLIP's classic vocab.json and merges.txt, so either loader finds its files."""
    tokenizer.save_pretrained(directory)
    merges = learn_merges(grammar_words())
    (Path(directory) / "vocab.json").write_text(json.dumps(vocabulary(merges), ensure_ascii=False, indent=1))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (Path(directory) / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
