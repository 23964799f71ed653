"""Reference losses against a hand computation: unigram and bigram, add-one smoothed, on a job's split."""

from __future__ import annotations

import math

import pytest

from tests.harness import SHAKESPEARE
from worker.engine import references
from worker.engine.config import split_sizes

# 10 characters, val_fraction 0.3: the model is fitted on "ababbab" and scored on "aéb" (targets é, b).
TEXT = "ababbab" + "aéb"
# V = 3 characters (a, b, é); training counts a:3, b:4 (7 characters).
UNIGRAM = -(math.log((0 + 1) / (7 + 3)) + math.log((4 + 1) / (7 + 3))) / 2
# Training pairs ab:3 ba:2 bb:1, so a is followed 3 times, b 3 times, é never.
# P(é | a) = (0 + 1) / (3 + 3); P(b | é) = (0 + 1) / (0 + 3).
BIGRAM = -(math.log(1 / 6) + math.log(1 / 3)) / 2


def test_the_references_of_a_text_match_a_hand_computation():
    assert split_sizes(len(TEXT), 0.3) == (7, 3)
    refs = references.of_text(TEXT, 0.3)
    assert refs.unigram == pytest.approx(UNIGRAM)
    assert refs.bigram == pytest.approx(BIGRAM)
    assert refs.val_fraction == 0.3


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 1 << 20])
def test_a_streamed_file_gives_the_same_numbers_whatever_its_chunks(tmp_path, monkeypatch, chunk_chars):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")  # é is two bytes: characters, not bytes, are counted
    monkeypatch.setattr(references, "CHUNK_CHARS", chunk_chars)
    for refs in (references.of_file(path, 0.3), references.of_file(path, 0.3, num_chars=len(TEXT))):
        assert refs.unigram == pytest.approx(UNIGRAM)
        assert refs.bigram == pytest.approx(BIGRAM)


def test_a_separate_validation_text_is_scored_after_training_on_the_whole_corpus():
    refs = references.of_texts("ababbab", "aéb")
    assert (refs.unigram, refs.bigram, refs.val_fraction) == (pytest.approx(UNIGRAM), pytest.approx(BIGRAM), None)


def test_too_little_held_out_gives_no_references():
    assert references.of_text(TEXT, 0.0) is None
    assert references.of_text(TEXT, 0.1) is None  # one held-out character: no target


def test_on_real_text_the_bigram_reference_is_below_the_unigram_below_uniform():
    text = SHAKESPEARE.read_text()
    refs = references.of_file(SHAKESPEARE, 0.1)
    in_memory = references.of_text(text, 0.1)
    assert (refs.unigram, refs.bigram) == (pytest.approx(in_memory.unigram), pytest.approx(in_memory.bigram))
    assert refs.bigram < refs.unigram < math.log(len(set(text)))
