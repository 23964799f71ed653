"""The peer a user would pick instead of a char-RNN: a small character-level transformer, trained for a
time budget and scored on held-out text (bench_quality.py's `--transformer`).

The shape of nanoGPT's `shakespeare_char` recipe sized for a CPU budget (its README's CPU settings:
4 layers, 4 heads, 128 wide, context 64, batch 12): pre-norm blocks, learned positions, GELU MLP 4x wide, the
output head tied to the token embedding, AdamW (betas 0.9/0.99, weight decay 0.1 on matrices only),
warmup then cosine decay to a tenth of the peak by elapsed time, gradient clipping at 1.0, bf16 autocast
where the CPU has it, random windows of the training text as batches.

Scoring gives every held-out character at least half a context of history: windows of `block_size`
characters with a stride of half that, each scoring only its second half (the first window scores all).
An RNN carries its state across the whole text, so scoring the transformer on disjoint windows would
charge it for the characters that start each window with no history.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

# nanoGPT's shakespeare_char recipe with its README's CPU sizes (4 layers, 4 heads, 128 wide, context 64,
# batch 12, dropout 0); its learning rate, warmup, floor, betas, weight decay and clipping. At 120 s on
# a 2-core CPU the larger batch 32 x context 128 took 508 steps and scored 2.19.
TRANSFORMER = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12,
               "learning_rate": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 100, "weight_decay": 0.1,
               "grad_clip": 1.0, "dropout": 0.0}


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab_size: int, c: dict):
        super().__init__()
        self.block_size = c["block_size"]
        self.tokens = nn.Embedding(vocab_size, c["n_embd"])
        self.positions = nn.Embedding(c["block_size"], c["n_embd"])
        self.blocks = nn.Sequential(*(Block(c["n_embd"], c["n_head"], c["dropout"]) for _ in range(c["n_layer"])))
        self.ln_f = nn.LayerNorm(c["n_embd"])
        self.head = nn.Linear(c["n_embd"], vocab_size, bias=False)
        self.head.weight = self.tokens.weight  # tied, as nanoGPT
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.ln_f(self.blocks(self.tokens(ids) + self.positions(positions))))


def lr_at(c: dict, step: int, progress: float) -> float:
    if step < c["warmup_steps"]:
        return c["learning_rate"] * (step + 1) / c["warmup_steps"]
    floor = c["min_lr_ratio"]
    return c["learning_rate"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_transformer(train: torch.Tensor, vocab_size: int, seconds: float, c: dict) -> tuple[CharTransformer, dict]:
    torch.manual_seed(0)
    model = CharTransformer(vocab_size, c)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": c["weight_decay"]},
                             {"params": others, "weight_decay": 0.0}], lr=c["learning_rate"], betas=(0.9, 0.99))
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    B, T = c["batch_size"], c["block_size"]
    generator = torch.Generator().manual_seed(0)
    steps, loss = 0, None
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for group in opt.param_groups:
            group["lr"] = lr_at(c, steps, elapsed / seconds)
        starts = torch.randint(len(train) - T - 1, (B,), generator=generator)
        x = torch.stack([train[s : s + T] for s in starts.tolist()])
        y = torch.stack([train[s + 1 : s + T + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        opt.step()
        steps += 1
    seconds_run = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.parameters())
    return model, {"steps": steps, "train_loss": loss.item(), "chars_per_second": steps * B * T / seconds_run,
                   "parameters": parameters, "config": {**c, "bf16": bf16}}


@torch.inference_mode()
def score_transformer(model: CharTransformer, ids: torch.Tensor, batch: int = 64) -> float:
    """Mean nats per held-out character (each predicted from the ones before it), in fp32."""
    model.eval()
    T, half = model.block_size, model.block_size // 2
    total, count = 0.0, 0
    starts = list(range(0, max(1, len(ids) - T), half))
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        x = torch.stack([ids[s : s + T] for s in chunk])
        y = torch.stack([ids[s + 1 : s + T + 1] for s in chunk])
        losses = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), T)
        for row, s in zip(losses, chunk, strict=True):
            scored = row if s == 0 else row[half:]
            total, count = total + scored.sum().item(), count + scored.numel()
    # The tail the last full window did not reach.
    last = starts[-1] + T
    if last < len(ids) - 1:
        x, y = ids[len(ids) - 1 - T : -1].unsqueeze(0), ids[len(ids) - T :].unsqueeze(0)
        tail = len(ids) - 1 - last
        losses = F.cross_entropy(model(x)[0, -tail:], y[0, -tail:], reduction="sum")
        total, count = total + losses.item(), count + tail
    return total / count
