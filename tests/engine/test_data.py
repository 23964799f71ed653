"""Characters, vocabulary and the batch layout that truncated BPTT relies on."""

import pytest
import torch

from worker.engine.data import CorpusError, StreamBatcher, Vocab, decode_utf8, eval_streams, read_text, split_train_val


def test_vocab_round_trips_unicode_code_points():
    text = "naïve café — 東京 🙂\n"
    vocab = Vocab.from_text(text)
    assert len(vocab) == len(set(text))  # code points, not UTF-8 bytes
    assert vocab.decode(vocab.encode(text).tolist()) == text


def test_unknown_characters_are_listed_in_order():
    vocab = Vocab.from_text("abc")
    assert vocab.unknown("xaybx") == ["x", "y"]
    with pytest.raises(CorpusError, match=r"2 character\(s\).*'x', 'y'"):
        vocab.encode("xaybx", what="the prompt")


def test_non_utf8_reports_offset_of_first_bad_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("hello café".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"byte 0xe9 at offset 9"):
        read_text(path)
    assert decode_utf8("ok é".encode()) == "ok é"


def test_empty_and_missing_files_are_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        read_text(empty)
    with pytest.raises(CorpusError, match="does not exist"):
        read_text(tmp_path / "nope.txt")


def test_too_small_corpus_says_how_small_and_what_to_change():
    data = torch.arange(100) % 7
    expected = r"has 100 characters.*needs at least 2,111.*fits batch_size=1 and seq_len=49"
    with pytest.raises(CorpusError, match=expected):
        StreamBatcher(data, batch_size=32, seq_len=63)
    with pytest.raises(CorpusError, match=r"fits batch_size=5\b"):
        StreamBatcher(torch.arange(400) % 7, batch_size=32, seq_len=63)


def test_validation_split_is_the_tail():
    data = torch.arange(1000)
    train, val = split_train_val(data, 0.1)
    assert len(val) == 100 and val[0] == 900 and train[-1] == 899


def test_targets_are_inputs_shifted_by_one_and_streams_are_contiguous():
    data = torch.arange(10_000)  # each id is its own position, so layout is visible
    batcher = StreamBatcher(data, batch_size=4, seq_len=8, seed=3)
    for epoch in (0, 1, 2):
        previous = None
        for i in range(batcher.batches_per_epoch):
            x, y = batcher.batch(epoch, i)
            assert x.shape == y.shape == (4, 8)
            assert torch.equal(y, x + 1)  # next character
            assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # each row is a contiguous slice
            if previous is not None:
                assert torch.equal(x[:, 0], previous[:, -1] + 1)  # row b continues where it stopped
            previous = x
        # rows are disjoint slices of the text
        rows = torch.stack([batcher.batch(epoch, i)[0] for i in range(batcher.batches_per_epoch)], 1).reshape(4, -1)
        assert len(set(rows.flatten().tolist())) == rows.numel()
    assert batcher.offset(0) == 0 and batcher.offset(1) == batcher.offset(1)


def test_eval_streams_score_every_target_exactly_once():
    data = torch.arange(1, 1001)
    inputs, targets = eval_streams(data, 7)
    scored = targets[targets != -100]
    assert sorted(scored.tolist()) == list(range(2, 1001))
    mask = targets != -100
    assert torch.equal(targets[mask], inputs[mask] + 1)
