"""Prompt building and CLIP token counts, against the tiny model's real tokenizer files (vocab.json + merges.txt).

transformers' CLIPTokenizer (what the pipeline tokenizes with) is the reference the torch-free counter must match.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from api.clip_tokens import ClipTokenCounter, EstimatedTokenCounter, token_counter
from api.prompts import BUDGET, build_prompt, era_cue
from shared.schemas import IllustrationRequest

TEXTS = [
    "grandma teaching me to ride a bike",
    "Grandma  Teaching\tME to ride   a BIKE!!",
    "it's the summer of '65, we'll go; they're here",
    "Café crème at the Brasserie, naïve façade",
    "1965-07-14 and 42 candles",
    "日本の夏 祭り",
    "emoji 🎂🎈 party",
    "",
    "   ",
    "a" * 300,
]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir / "base" / "tokenizer"


@pytest.mark.parametrize("text", TEXTS)
def test_counts_match_the_pipelines_tokenizer(tokenizer_dir: Path, text: str) -> None:
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    counter = ClipTokenCounter(tokenizer_dir)
    expected = reference(text, add_special_tokens=False, truncation=False)["input_ids"]
    assert counter.ids(text) == expected
    assert counter.count(text) == len(expected)


# Token ids of OpenAI's CLIP BPE (SDXL's tokenizers), computed with open_clip 3.3.0's SimpleTokenizer (the reference
# implementation, not a dependency of this project) from its own bpe_simple_vocab_16e6.txt.gz.
CLIP_IDS = {
    "grandma teaching me to ride a bike, watercolor style, 1960s, warm sepia palette, nostalgic mood": [
        10525, 5141, 614, 531, 2994, 320, 3701, 267, 14211, 1844, 267, 272, 280, 277, 271, 338, 267, 3616, 567, 8918,
        13901, 267, 24468, 5394],
    "A photorealistic portrait of an elderly woman, soft lighting, 35mm film grain": [
        320, 1153, 16157, 5352, 539, 550, 15455, 2308, 267, 3773, 5799, 267, 274, 276, 2848, 1860, 12109],
    "Summer of '65: we rode along the river! Grandpa's café, naïve charm": [
        1673, 539, 262, 277, 276, 281, 649, 18449, 2528, 518, 2473, 256, 14582, 568, 15304, 267, 1097, 35689, 563,
        10876],
}


@pytest.mark.parametrize(("text", "ids"), CLIP_IDS.items())
def test_the_tiny_tokenizer_counts_like_sdxls_clip(tiny_model_dir: Path, text: str, ids: list[int]) -> None:
    """The demo's prompts are built with SDXL's token counts: the tiny model's tokenizer is CLIP's real BPE (49,408
    tokens), so a known prompt gives CLIP's ids, in the pipeline's tokenizer and in the API's counter alike."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_model_dir / "base" / "tokenizer"))
    assert len(tokenizer) == 49408
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    for name in ("tokenizer", "tokenizer_2"):
        counter = ClipTokenCounter(tiny_model_dir / "base" / name)
        assert counter.ids(text) == ids
        assert counter.count(text) == len(ids)


def test_the_second_tokenizer_counts_the_same(tiny_model_dir: Path) -> None:
    first = ClipTokenCounter(tiny_model_dir / "base" / "tokenizer")
    second = ClipTokenCounter(tiny_model_dir / "base" / "tokenizer_2")
    assert [first.count(t) for t in TEXTS] == [second.count(t) for t in TEXTS]


def test_missing_files_fall_back_to_an_estimate(tmp_path: Path) -> None:
    counter = token_counter(tmp_path / "nothing")
    assert isinstance(counter, EstimatedTokenCounter)
    assert not counter.exact
    assert counter.count("grandma teaching me") == 2 + 2 + 1  # "grandma" and "teaching" are long words
    assert counter.count("it's 65!") == 1 + 1 + 1 + 1 + 1


def request(**fields: Any) -> IllustrationRequest:
    document = {"user_id": "u-1", "prompt": "grandma on a bike", **fields}
    return IllustrationRequest.model_validate_json(json.dumps(document))


WIDE = {"style": {"artistic_style": "watercolor", "color_palette": "warm sepia", "mood": "nostalgic"},
        "memory_context": {"title": "Summer of '65", "content": "long memoir text", "date": "1965-07-14"}}


class Words:
    """A counter where every word is one token (a stand-in whose numbers are easy to read in a table)."""

    exact = True

    def count(self, text: str) -> int:
        return len(text.replace(",", " ,").split())


@pytest.mark.parametrize(
    ("fields", "prompt"),
    [
        ({}, "grandma on a bike"),
        ({"style": {"artistic_style": "watercolor"}}, "grandma on a bike, watercolor style"),
        ({"style": {"artistic_style": "Art Deco style"}}, "grandma on a bike, Art Deco style"),
        ({"memory_context": {"date": "1965-07-14"}},
         "grandma on a bike, 1960s, sixties fashion and cars, period-accurate clothing and setting"),
        ({"memory_context": {"date": "2011-01-01"}}, "grandma on a bike, 2010s, period-accurate clothing and setting"),
        ({"memory_context": {"date": "1888-01-01"}},
         "grandma on a bike, 19th century, antique photograph look, period-accurate clothing and setting"),
        ({"style": {"mood": "Nostalgic"}}, "grandma on a bike, nostalgic mood, soft golden light"),
        ({"style": {"mood": "eerie"}}, "grandma on a bike, eerie mood"),
        ({"style": {"color_palette": "  warm   sepia "}}, "grandma on a bike, warm sepia color palette"),
        ({"memory_context": {"title": "Summer of '65", "content": "never in the prompt"}},
         "grandma on a bike, Summer of '65"),
        (WIDE, "grandma on a bike, watercolor style, 1960s, sixties fashion and cars, period-accurate clothing and "
               "setting, nostalgic mood, soft golden light, warm sepia color palette, Summer of '65"),
    ],
)
def test_parts_in_priority_order(fields: dict[str, Any], prompt: str) -> None:
    built = build_prompt(request(**fields), Words())
    assert built.prompt == prompt
    assert built.warnings == []
    assert build_prompt(request(**fields), Words()) == built  # deterministic


def test_every_cue_of_a_usual_request_fits_as_with_sdxl(tokenizer_dir: Path) -> None:
    """CLIP's vocabulary (the tiny model's too): a prompt with style, era, mood, palette and title fits in 77."""
    counter = ClipTokenCounter(tokenizer_dir)
    built = build_prompt(request(**WIDE), counter)
    assert built.warnings == []
    assert built.prompt == build_prompt(request(**WIDE), Words()).prompt
    assert counter.count(built.prompt) == built.tokens <= BUDGET


def test_what_does_not_fit_is_cut_by_priority_and_named(tokenizer_dir: Path) -> None:
    counter = ClipTokenCounter(tokenizer_dir)
    prompt = "grandma teaching me to ride a bike along the river on a windy afternoon " * 4
    built = build_prompt(request(prompt=prompt.strip(), **WIDE), counter)
    assert built.tokens <= BUDGET
    assert counter.count(built.prompt) == built.tokens
    assert built.prompt == prompt.strip() + ", watercolor style"
    assert built.warnings == ["prompt: left out to fit CLIP's 77-token window: memory_context.date, style.mood, "
                              "style.color_palette, memory_context.title"]
    assert "1965" not in " ".join(built.warnings)
    assert "sepia" not in " ".join(built.warnings)


@pytest.mark.parametrize("budget_words", [4, 5, 10, 12, 20, 30])
def test_a_lower_part_never_displaces_a_higher_one(budget_words: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.prompts.BUDGET", budget_words)
    built = build_prompt(request(**WIDE), Words())
    assert Words().count(built.prompt) <= max(budget_words, Words().count("grandma on a bike"))
    full = build_prompt(request(**WIDE), Words()).prompt
    assert full.startswith(built.prompt)


def test_a_prompt_over_the_window_is_kept_and_said(tokenizer_dir: Path) -> None:
    long_prompt = "grandma " * 80  # one token a word with CLIP's vocabulary
    built = build_prompt(request(prompt=long_prompt, style={"mood": "joyful"}, negative_prompt="blurry " * 80),
                         ClipTokenCounter(tokenizer_dir))
    assert built.prompt == long_prompt.strip()
    assert built.warnings[0].startswith("prompt: ")
    assert f"first {BUDGET}" in built.warnings[0]
    assert built.warnings[1].endswith("style.mood")
    assert built.warnings[2].startswith("negative_prompt:")


def test_era_cues() -> None:
    assert era_cue(dt.date(1923, 5, 1)).startswith("1920s, roaring twenties")
    assert era_cue(dt.date(2031, 5, 1)) == "2030s, period-accurate clothing and setting"
