"""Per-character inspection and unit finding on tiny models built here (no training needed)."""

from __future__ import annotations

import math

import pytest
import torch

from worker.engine.config import ModelConfig
from worker.engine.data import Vocab
from worker.engine.errors import CorpusError, InputError
from worker.engine.inspection import find_units, inspect_text, text_features
from worker.engine.model import CharRNN, layer_states
from worker.engine.scoring import character_logprobs

TEXT = 'say (a "b" c) to\nthe (end)\nnow "go" (x (y) z)\n'


def tiny(cell: str, layers: int = 2, hidden: int = 8, seed: int = 0) -> tuple[CharRNN, Vocab]:
    torch.manual_seed(seed)
    vocab = Vocab.from_text(TEXT + "ABC")
    config = ModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=hidden, num_layers=layers, embedding_dim=6)
    model = CharRNN(config)
    return model.eval(), vocab


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_each_character_gets_probability_surprise_rank_entropy_and_top(cell):
    model, vocab = tiny(cell)
    result = inspect_text(model, vocab, TEXT, top_k=len(vocab))
    rows = result["characters"]
    assert [r["char"] for r in rows] == list(TEXT)
    chosen, _ = character_logprobs(model, vocab, "", TEXT)  # the same forward pass as the logprobs route
    for row, logprob in zip(rows, chosen, strict=True):
        assert row["prob"] == pytest.approx(math.exp(logprob), abs=1e-5)
        assert row["surprise_bits"] == pytest.approx(-math.log2(row["prob"]), abs=2e-3)
        assert sum(t["prob"] for t in row["top"]) == pytest.approx(1.0, abs=1e-4)  # every character: sums to 1
        probs = [t["prob"] for t in row["top"]]
        assert probs == sorted(probs, reverse=True)
        assert [t["char"] for t in row["top"]].index(row["char"]) + 1 == row["rank"]
        entropy = -sum(p * math.log2(p) for p in probs if p > 0)
        assert row["entropy_bits"] == pytest.approx(entropy, abs=2e-3)
    assert result["activations"] is None


@pytest.mark.parametrize(("cell", "has_c"), [("lstm", True), ("gru", False), ("rnn", False)])
def test_activations_of_a_layer_have_one_row_per_character(cell, has_c):
    model, vocab = tiny(cell, layers=2, hidden=8)
    result = inspect_text(model, vocab, TEXT, top_k=2, layer=1, units=[0, 5, 7])
    act = result["activations"]
    assert act["layer"] == 1 and act["units"] == [0, 5, 7]
    assert len(act["h"]) == len(TEXT) and all(len(row) == 3 for row in act["h"])
    assert (act["c"] is not None) == has_c
    if has_c:
        assert len(act["c"]) == len(TEXT) and all(len(row) == 3 for row in act["c"])
    assert all(len(r["top"]) == 2 for r in result["characters"])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_last_layers_states_are_the_models_own(cell):
    """layer_states runs the layers apart; its last layer's h must be what the fused model computes."""
    model, vocab = tiny(cell, layers=3, hidden=8)
    ids = vocab.encode(TEXT)
    out, _ = model.rnn(model.embedding(ids.unsqueeze(0)))
    h, _ = layer_states(model, ids, 2)
    assert torch.allclose(h, out[0], atol=1e-5)


def test_an_lstms_cell_states_are_those_of_a_step_by_step_cell():
    model, vocab = tiny("lstm", layers=2, hidden=8)
    ids = vocab.encode(TEXT)
    cell = torch.nn.LSTMCell(8, 8)
    rnn = model.rnn
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l1"))
        below, _ = layer_states(model, ids, 0)
        h = c = torch.zeros(1, 8)
        cs = []
        for x in below:
            h, c = cell(x.unsqueeze(0), (h, c))
            cs.append(c[0])
    _, states = layer_states(model, ids, 1)
    assert torch.allclose(states, torch.stack(cs), atol=1e-5)


def test_out_of_range_layer_and_units_are_refused_with_the_range():
    model, vocab = tiny("lstm", layers=2, hidden=8)
    with pytest.raises(InputError, match="layer must be between 0 and 1"):
        inspect_text(model, vocab, TEXT, layer=2)
    with pytest.raises(InputError, match="units must be between 0 and 7"):
        inspect_text(model, vocab, TEXT, layer=0, units=[8])
    with pytest.raises(CorpusError, match="never saw"):
        inspect_text(model, vocab, "é")


def test_features_follow_the_text():
    features = text_features('a "b" (c)\nxy')
    assert features["inside_quotes"] == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert features["inside_brackets"] == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert features["position_in_line"][-3:] == [0, 1, 2]
    assert features["start_of_word"][:3] == [1, 0, 0]


def test_find_units_finds_a_planted_bracket_unit():
    """An LSTM whose unit 3 of layer 0 counts bracket depth in its cell (input and forget gates held open,
    the candidate +1 on an opening bracket, -1 on a closing one): find_units must rank it first."""
    model, vocab = tiny("lstm", layers=2, hidden=8, seed=1)
    unit, hidden = 3, 8
    embedding_dim = len(vocab)
    model.embedding = torch.nn.Embedding.from_pretrained(torch.eye(len(vocab)))
    model.rnn = torch.nn.LSTM(embedding_dim, hidden, num_layers=2, batch_first=True)
    with torch.no_grad():
        w_ih, w_hh, bias = model.rnn.weight_ih_l0, model.rnn.weight_hh_l0, model.rnn.bias_ih_l0
        rows = {gate: gate * hidden + unit for gate in range(4)}  # i, f, g, o
        for gate, row in rows.items():
            w_ih[row].zero_()
            w_hh[row].zero_()
            model.rnn.bias_hh_l0[row] = 0.0
            bias[row] = 10.0 if gate != 2 else 0.0
        index = vocab.index
        for char in "(":
            w_ih[rows[2], index[char]] = 10.0
        for char in ")":
            w_ih[rows[2], index[char]] = -10.0
    found = {f["feature"]: f for f in find_units(model, vocab, TEXT * 3, top=3)}
    best = found["inside_brackets"]["units"][0]
    assert (best["layer"], best["unit"]) == (0, unit)
    assert best["correlation"] > 0.9
    assert found["inside_quotes"]["units"]  # the text has quotes: some unit is reported
    assert "note" in {f["feature"]: f for f in find_units(model, vocab, "abc abc")}["inside_quotes"]


def test_cli_inspect_prints_a_table_and_json(tmp_path):
    """`charrnn inspect`, in process (typer's runner): JSON with every field asked for, or a table."""
    import json

    from typer.testing import CliRunner

    from worker.cli import cli
    from worker.engine.checkpoint import weights_bytes

    model, vocab = tiny("lstm", layers=2, hidden=8)
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(weights_bytes(model, vocab))
    text = tmp_path / "text.txt"
    text.write_text('say "b" (c)')
    base = ["inspect", str(checkpoint), str(text)]
    runner = CliRunner()
    as_json = runner.invoke(cli, [*base, "--json", "--top-k", "2", "--layer", "1", "--units", "3", "--units", "4",
                                  "--find-units"])
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert [c["char"] for c in result["characters"]] == list('say "b" (c)')
    assert all(len(c["top"]) == 2 for c in result["characters"])
    assert result["activations"]["units"] == [3, 4] and len(result["activations"]["c"]) == 11
    assert {f["feature"] for f in result["found_units"]} >= {"inside_quotes", "inside_brackets"}
    table = runner.invoke(cli, base)
    assert table.exit_code == 0, table.output
    assert "surprise bits" in table.stdout and "'\"'" in table.stdout and "bits per character" in table.stdout
    bad = runner.invoke(cli, [*base, "--layer", "5"])
    assert bad.exit_code == 2 and "layer must be between 0 and 1" in bad.output
