"""Counting CLIP tokens without torch: the prompt builder keeps the prompt inside CLIP's 77-token window.

``ClipTokenCounter`` builds, with the Rust ``tokenizers`` library (no torch, a small wheel the API image can
carry), the same tokenizer transformers builds from a CLIP ``vocab.json`` + ``merges.txt`` (its ``CLIPConverter``:
NFC, whitespace collapsed, lower case, CLIP's split pattern, byte-level BPE with ``</w>`` word ends). The files are
the model's own (``<model_dir>/base/tokenizer``; setting ``tokenizer_dir``). Where they are not on the API's disk,
``EstimatedTokenCounter`` counts with CLIP's split pattern and a conservative guess per word, and says so.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from pathlib import Path
from typing import Protocol

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

log = logging.getLogger(__name__)

# CLIP's pre-tokenizer pattern (the same in transformers' CLIPConverter and OpenAI's simple_tokenizer).
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_ESTIMATE_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


class TokenCounter(Protocol):
    exact: bool

    def count(self, text: str) -> int:
        """Tokens of ``text`` without the start and end markers."""


class ClipTokenCounter:
    """The exact count, from the model's tokenizer files."""

    exact = True

    def __init__(self, folder: Path) -> None:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = []
        for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
            if line.startswith("#version") or not line.strip():
                continue
            left, right = line.split()
            merges.append((left, right))
        unk = _special(folder, "unk_token", "<|endoftext|>")
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                         end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


class EstimatedTokenCounter:
    """Without the files: CLIP's split, and a long word counted as one token per 4 letters (CLIP's BPE rarely
    needs more), so the estimate errs towards cutting."""

    exact = False

    def count(self, text: str) -> int:
        pieces = _ESTIMATE_SPLIT.findall(text.lower())
        return sum(max(1, math.ceil(len(piece) / 4)) if piece.isalpha() else 1 for piece in pieces)


def _special(folder: Path, name: str, default: str) -> str:
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / file
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return default


@functools.cache
def token_counter(folder: Path) -> TokenCounter:
    """The exact counter when ``folder`` holds CLIP tokenizer files, else the estimate (logged once)."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return ClipTokenCounter(folder)
    log.warning("no CLIP tokenizer files in %s: prompt token counts are estimated", folder)
    return EstimatedTokenCounter()
