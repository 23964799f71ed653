"""What a model makes of a text, character by character, and which of its units track what.

`inspect_text` reads the text as /score does (the sampler's priming before the first character, the
model's own distribution at temperature 1) and, for every character, says how likely the model found
it, how surprised it was (bits), where it ranked, how unsure the prediction was (entropy, bits) and what
it expected instead (top-k). With a layer, it adds each character's hidden activations of that layer
after reading the character (for an LSTM the cell state too), rounded so the answer stays small.

`find_units` correlates every unit's activation with simple features of the text (inside quotes,
inside brackets, position in the line, start of a word, upper case) and returns the best units per
feature: the char-rnn write-up's "quote cell", found in one call.
"""

from __future__ import annotations

import math

import torch

from worker.engine.data import Vocab
from worker.engine.errors import InputError
from worker.engine.model import CharRNN, each_layer_states, layer_states

DECIMALS = 3  # activations and correlations: enough to shade a character, small on the wire
PROB_DECIMALS = 6
LN2 = math.log(2)
MAX_ACTIVATION_VALUES = 1_000_000  # characters x units x states in one answer

FEATURES = {
    "inside_quotes": "inside double quotes",
    "inside_brackets": "inside brackets or parentheses",
    "position_in_line": "characters since the last newline",
    "start_of_word": "the first letter of a word",
    "upper_case": "an upper-case letter",
}


def _round(values: torch.Tensor, decimals: int = DECIMALS) -> list:
    return torch.round(values.float(), decimals=decimals).tolist()


def _ids(model: CharRNN, vocab: Vocab, text: str) -> tuple[torch.Tensor, int]:
    """The priming text and `text` as ids, and where `text` starts in them."""
    from worker.engine.sampler import priming_text

    if not text:
        raise InputError("text must have at least 1 character", param="text")
    prime = priming_text(vocab, "")
    ids = vocab.encode(prime + text, what="the text", param="text").to(next(model.parameters()).device)
    return ids, len(prime)


@torch.inference_mode()
def inspect_text(
    model: CharRNN,
    vocab: Vocab,
    text: str,
    top_k: int = 5,
    layer: int | None = None,
    units: list[int] | None = None,
) -> dict:
    """{"characters": [{char, prob, surprise_bits, rank, entropy_bits, top}], "activations": {...} | None}.

    `top` lists the `top_k` characters the model expected at that position, most likely first; `rank` is
    1 for the most likely character. Activations: {"layer", "units", "h": [T][U], "c": [T][U] | None}."""
    model.eval()
    ids, start = _ids(model, vocab, text)
    activations = None
    if layer is not None:
        activations = _activations(model, ids, start, layer, units)
    logits, _ = model(ids.unsqueeze(0))
    logprobs = logits[0, start - 1 : -1].float().log_softmax(dim=-1)  # (T, V): the prediction for each char
    targets = ids[start:]
    chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ranks = (logprobs > chosen.unsqueeze(-1)).sum(dim=-1) + 1
    probs = logprobs.exp()
    entropy_bits = -(probs * logprobs).sum(dim=-1) / LN2
    top_values, top_indices = probs.topk(min(top_k, len(vocab)), dim=-1) if top_k > 0 else (None, None)
    # Whole columns to Python at once: indexing a tensor per character costs more than the model.
    chosen_probs = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()
    surprise_bits = (-chosen / LN2).tolist()
    columns = zip(text, chosen_probs, surprise_bits, ranks.tolist(), entropy_bits.tolist(), strict=True)
    no_top = [([], [])] * len(text)
    tops = zip(top_indices.tolist(), top_values.tolist(), strict=True) if top_values is not None else no_top
    characters = [
        {
            "char": char,
            "prob": round(prob, PROB_DECIMALS),
            "surprise_bits": round(surprise, DECIMALS),
            "rank": rank,
            "entropy_bits": round(entropy, DECIMALS),
            "top": [
                {"char": vocab.chars[j], "prob": round(p, PROB_DECIMALS)} for j, p in zip(indices, values, strict=True)
            ],
        }
        for (char, prob, surprise, rank, entropy), (indices, values) in zip(columns, tops, strict=True)
    ]
    return {"characters": characters, "activations": activations}


def _activations(model: CharRNN, ids: torch.Tensor, start: int, layer: int, units: list[int] | None) -> dict:
    hidden = model.config.hidden_size
    if units is None:
        units = list(range(hidden))
    bad = [u for u in units if not 0 <= u < hidden]
    if bad:
        raise InputError(
            f"units must be between 0 and {hidden - 1} for this model (its hidden_size), got {bad[:5]}", param="units"
        )
    states = 2 if model.config.cell == "lstm" else 1
    count = (len(ids) - start) * len(units) * states
    if count > MAX_ACTIVATION_VALUES:
        raise InputError(
            f"units: {len(ids) - start} characters x {len(units)} units x {states} state(s) is {count:,} values, "
            f"over {MAX_ACTIVATION_VALUES:,}; ask for fewer units (e.g. units=[0, 1, 2]) or a shorter text",
            param="units",
        )
    h, c = layer_states(model, ids, layer)
    index = torch.tensor(units, dtype=torch.long, device=h.device)
    # The state after reading each character of the text (the priming is left out).
    return {
        "layer": layer,
        "units": units,
        "h": _round(h[start:].index_select(1, index)),
        "c": _round(c[start:].index_select(1, index)) if c is not None else None,
    }


def text_features(text: str) -> dict[str, list[float]]:
    """Each feature's value at each character, as seen after reading it."""
    quotes = brackets = column = 0
    values: dict[str, list[float]] = {name: [] for name in FEATURES}
    previous = "\n"
    for char in text:
        if char == '"':
            quotes ^= 1  # an opening quote is inside, a closing one outside
        if char in "([{":
            brackets += 1
        elif char in ")]}" and brackets:
            brackets -= 1
        column = 0 if char == "\n" else column + 1
        values["inside_quotes"].append(float(quotes))
        values["inside_brackets"].append(float(brackets > 0))
        values["position_in_line"].append(float(column))
        values["start_of_word"].append(float(char.isalpha() and not previous.isalpha()))
        values["upper_case"].append(float(char.isupper()))
        previous = char
    return values


def _standardized(values: torch.Tensor) -> torch.Tensor:
    """Columns of (T, N) centred and scaled to unit norm; a constant column becomes zeros."""
    centred = values - values.mean(dim=0, keepdim=True)
    norm = centred.norm(dim=0, keepdim=True)
    return torch.where(norm > 1e-8, centred / norm.clamp_min(1e-8), torch.zeros_like(centred))


@torch.inference_mode()
def find_units(model: CharRNN, vocab: Vocab, text: str, top: int = 5) -> list[dict]:
    """The `top` units (every layer, h and an LSTM's c) whose activation best tracks each feature, by the
    absolute Pearson correlation over the text's characters; a feature the text never varies (no quote
    in it, say) has no units and says why."""
    model.eval()
    ids, start = _ids(model, vocab, text)
    columns, names = [], []
    for layer, (h, c) in enumerate(each_layer_states(model, ids)):
        for state, values in (("h", h), ("c", c)):
            if values is not None:
                columns.append(values[start:].float())
                names.extend((layer, state, unit) for unit in range(values.shape[1]))
    activations = _standardized(torch.cat(columns, dim=1))  # (T, all units)
    results = []
    for feature, values in text_features(text).items():
        series = torch.tensor(values, device=activations.device).unsqueeze(1)
        found = {"feature": feature, "description": FEATURES[feature], "units": []}
        if float(series.std(correction=0)) == 0:
            found["note"] = f"the text never changes in this feature ({FEATURES[feature]}): give a text that does"
            results.append(found)
            continue
        correlation = (_standardized(series).T @ activations)[0]
        best = correlation.abs().topk(min(top, correlation.numel()))
        for index in best.indices.tolist():
            layer, state, unit = names[index]
            value = round(float(correlation[index]), DECIMALS)
            found["units"].append({"layer": layer, "state": state, "unit": unit, "correlation": value})
        results.append(found)
    return results
