"""Training: truncated BPTT over parallel streams, AdamW, a linearly decaying rate, exact resumption.

The whole story, top to bottom:
  1. the corpus becomes character ids; the last `val_fraction` is held out (data.py);
  2. the training ids are laid out as `batch_size` parallel streams and cut into `seq_len` windows;
     the hidden state is carried from window to window (detached) and reset at each new epoch;
  3. the model's size and dropout, where the run leaves them out, are chosen for its budget (sizing.py);
     its own first steps may change the size once, and the run then starts again at step 0;
  4. each step: forward under autocast (bf16 where the hardware has it), cross-entropy in fp32,
     backward, gradient-norm clipping, AdamW with a learning rate that is a pure function of progress;
  5. every `eval_every` steps (or, left out, about EVALUATIONS_PER_RUN times spaced over the budget, on a
     bounded sample of the validation split) and at the end, the validation loss and a sample;
  6. every `checkpoint_every` steps, at each new best validation loss and at the end, a checkpoint that
     holds everything the run needs to continue bitwise identically (checkpoint.py).
"""

from __future__ import annotations

import errno
import hashlib
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from worker.engine.autoconfig import Choice
from worker.engine.averaging import WeightAverage
from worker.engine.checkpoint import (
    RunDirectory,
    TrainingState,
    load_model,
    sha256_hex,
    weights_bytes,
)
from worker.engine.config import (
    ModelConfig,
    TrainConfig,
    batch_not_divisible,
    check_config,
    split_sizes,
    too_small_validation_split,
)
from worker.engine.data import StreamBatcher, Vocab, split_train_val
from worker.engine.device import resolve_device, resolve_precision
from worker.engine.distributed import DistContext
from worker.engine.doctor import Doctor
from worker.engine.errors import CheckpointError, ConfigError, CorpusError, DiskFullError, TrainingDiverged
from worker.engine.model import (
    CharRNN,
    autocast,
    detach_hidden,
    hidden_from_list,
    hidden_to_list,
    mean_cross_entropy,
)
from worker.engine.optim import build_optimizer
from worker.engine.records import CheckpointRecord, CheckpointStats, Diagnosis, RunResult, RunStarted, Snapshot
from worker.engine.references import of_text, of_texts
from worker.engine.sampler import Sampler, SampleRequest
from worker.engine.sampling_params import MAX_LENGTH, MAX_SEED
from worker.engine.scoring import score_ids
from worker.engine.sizing import Sizer, apply_training_choice

# A run always has at least one of these (TrainConfig fills in max_steps when none is given).
STOPPING_RULES = ("max_steps", "max_epochs", "max_seconds")
# With eval_every left out, a run evaluates this many times, evenly over its budget (steps, epochs or
# seconds), so a short run has a validation curve too; each such evaluation scores a fixed sample of
# the validation split, EVAL_WINDOWS windows of EVAL_WINDOW_CHARS spread over it, so that it stays
# cheap whatever the corpus (the same sample every time: the losses compare).
EVALUATIONS_PER_RUN = 12
EVAL_WINDOWS = 32
EVAL_WINDOW_CHARS = 1024


class TrainingObserver:
    """Hooks the trainer calls; the CLI prints them, the service's worker stores them as events."""

    def on_start(self, info: RunStarted) -> None: ...
    def on_metrics(self, metrics: Snapshot) -> None: ...
    def on_eval(self, metrics: Snapshot, sample: str) -> None: ...
    def on_checkpoint(self, checkpoint: CheckpointRecord) -> None: ...
    def on_diagnosis(self, diagnosis: Diagnosis) -> None: ...

    def should_stop(self) -> str | None:
        """A reason to stop now (cancelled, shutting down), or None to go on."""
        return None


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup (none by default), then a linear decay by overall progress (0..1), whichever stopping
    rule it comes from, down to min_lr_ratio: a run stopped by its time budget ends at its lowest rate.
    Linear rather than cosine: cosine spends the middle of a short run at a lower rate, and cost 0.010
    nats after two minutes (benchmarks/RESULTS.md)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    # With decay_fraction < 1 the rate holds at its peak until the decay's share of the run is left.
    decayed = max(0.0, min(progress, 1.0) - (1 - config.decay_fraction)) / config.decay_fraction
    return config.learning_rate * (1 - (1 - config.min_lr_ratio) * decayed)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Trainer:
    def __init__(
        self,
        text: str,
        run_dir: str | Path,
        model_config: dict | None = None,
        train_config: TrainConfig | None = None,
        init_from: str | Path | None = None,
        observer: TrainingObserver | None = None,
        corpus_path: str | None = None,
        val_text: str | None = None,
        init_from_sha256: str | None = None,
        memory_limit: int | None = None,
        reference_losses: dict | None = None,
    ):
        """Start a run in `run_dir`, or continue it from its latest checkpoint if it has one.

        `model_config` holds ModelConfig fields except vocab_size (taken from the text);
        `val_text`, if given, is the held-out set: the whole `text` is trained on and val_fraction is unused.
        `init_from` starts from another run's weights (and their vocabulary and architecture);
        `init_from_sha256`, when known, is what that file must hash to (a corrupt one is refused).
        Model fields left out of `model_config` are chosen for the budget and the corpus (autoconfig.py),
        never needing more than `memory_limit` bytes to train. `reference_losses` ({"unigram", "bigram"}
        of this split, when already known) spare the run computing them (references.py).
        """
        self.run = RunDirectory(run_dir)
        self.dist = DistContext.current()
        # Under torchrun only rank 0 reports and writes; the others train their share and follow.
        self.observer = (observer if self.dist.is_main else None) or TrainingObserver()
        self.config = train_config or TrainConfig()
        check_config(self.config)
        problem = batch_not_divisible(self.config.batch_size, self.dist.world_size)
        if problem:
            raise ConfigError(problem)
        self.device = resolve_device(self.config.device)
        self.autocast_dtype = resolve_precision(self.config.precision, self.device)
        torch.manual_seed(self.config.seed + self.dist.rank)
        self.choice: Choice | None = None  # what autoconfig chose for the model fields left out, if any
        self.sizer: Sizer | None = None  # while the run's own first steps may still change the model's size
        self.corpus_path, self.init_from = corpus_path, init_from
        probe_seconds = 0.0
        init = load_model(init_from, expected_sha256=init_from_sha256) if init_from else None
        if init:
            missing = init.vocab.unknown(text)
            if missing:
                raise CorpusError(
                    f"the corpus has characters the init_from model never saw: {''.join(missing[:20])!r}; "
                    "continue training only on text made of the same characters, or train from scratch"
                )
            self.vocab, self.model = init.vocab, init.model.train()
        else:
            self.vocab = Vocab.from_text(text)
            train_chars = len(text) if val_text is not None else split_sizes(len(text), self.config.val_fraction)[0]
            model_config, probe_seconds = self._model_fields(dict(model_config or {}), train_chars, memory_limit)
            self.model = CharRNN(ModelConfig(vocab_size=len(self.vocab), **model_config))
        self._adopt(self.model)

        data = self.vocab.encode(text, what="the corpus")
        if val_text is not None:
            self.train_data = data
            self.val_data = self.vocab.encode(val_text, what="the validation text")
        else:
            self.train_data, self.val_data = split_train_val(data, self.config.val_fraction)
        self.batcher = StreamBatcher(self.train_data, self.config.batch_size, self.config.seq_len, self.config.seed)
        if val_text is None:
            problem = too_small_validation_split(len(data), self.config.val_fraction)
            if problem:
                raise CorpusError(problem)
        self.eval_data = self.val_data if self.config.eval_every else held_out_sample(self.val_data)
        self.reference_losses = None
        if self.dist.is_main:  # only rank 0 reports
            self.reference_losses = reference_losses or _references(text, val_text, self.config.val_fraction)
        self.diagnosis: Diagnosis | None = None
        self._start_afresh()

        # The counters and losses, saved in each checkpoint with the optimizer, hidden and RNG states.
        self.state = TrainingState(corpus_sha256=sha256_text(text), elapsed=probe_seconds)
        self.resumed_from_step: int | None = None
        self.checkpointed_step: int | None = None  # the step of this run's latest checkpoint

        latest = self.run.latest()
        if latest:
            self._restore(*latest)
        else:
            self._write_run_record()

    def _adopt(self, model: CharRNN) -> None:
        """Train `model`: on the run's device, with its weight average and (under DDP) its wrapper."""
        self.model = model.to(self.device).train()
        # The average of the weights is what is evaluated, checkpointed and sampled from (averaging.py).
        self.average = WeightAverage(self.model, self.config.ema_decay) if self.config.ema_decay else None
        # What the training step calls: DDP averages gradients across ranks during backward.
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model) if self.dist.enabled else self.model)

    def _start_afresh(self) -> None:
        """A new optimizer, doctor and state for the model (at construction, and when re-sized)."""
        self.optimizer = build_optimizer(self.model, self.config.optimizer, self.config.learning_rate,
                                         self.config.weight_decay, self.device.type)
        self.doctor = Doctor(self.reference_losses, learning_rate=self.config.learning_rate,
                             model=self.model.config.to_dict())
        self.hidden = None

    def _write_run_record(self) -> None:
        if self.dist.is_main:
            self.run.write_run(
                {
                    "corpus_path": self.corpus_path,
                    "corpus_sha256": self.state.corpus_sha256,
                    "model": self.model.config.to_dict(),
                    "chosen": list(self.choice.reasons) if self.choice else [],
                    "chosen_training": self.choice.training if self.choice else {},
                    "training": self.config.to_dict(),
                    "init_from": str(self.init_from) if self.init_from else None,
                }
            )

    def _model_fields(self, given: dict, train_chars: int, memory_limit: int | None) -> tuple[dict, float]:
        """The given model fields and, for those left out, the sizer's choice (and the seconds its speed
        probe took). A run that has started before keeps the model it started with."""
        if self.run.run_file.is_file():
            run = self.run.read_run()
            apply_training_choice(self.config, run.get("chosen_training", {}))
            recorded = {k: v for k, v in run["model"].items() if k != "vocab_size"}
            return {**recorded, **given}, 0.0
        sizer = Sizer(given, self.config, vocab_size=len(self.vocab), train_chars=train_chars,
                      memory_limit=memory_limit, device=self.device, autocast_dtype=self.autocast_dtype,
                      dist=self.dist)
        choice = sizer.choose()
        self._take_choice(choice, sizer)
        self.sizer = sizer if sizer.rechecks else None
        return {**given, **choice.model}, sizer.spent()

    def _take_choice(self, choice: Choice, sizer: Sizer) -> None:
        """Autoconfig's choice: its reasons go in run.json and the start event, and its training fields
        (an epoch limit) apply where the run set none."""
        self.choice = choice if choice.model or choice.training else None
        apply_training_choice(self.config, choice.training, given=sizer.training)

    def _resized(self, step_seconds: float) -> bool:
        """Let the sizer time this step. Where, at the run's own speed, it chooses another size, start the
        run again at step 0 with that size, as if it had been chosen at first (its seconds so far still
        count). True when it did."""
        sizer = self.sizer
        choice = sizer.recheck(self.state.step, step_seconds, self.state.elapsed)
        self.state.elapsed += sizer.spent()  # sizes probed for the recheck count against the budget too
        if not sizer.rechecks:
            self.sizer = None
        if choice is None:
            return False
        self._take_choice(choice, sizer)
        # As a run that chose this size at first: the same seed, so the same first weights.
        torch.manual_seed(self.config.seed + self.dist.rank)
        self._adopt(CharRNN(ModelConfig(vocab_size=len(self.vocab), **{**sizer.given, **choice.model})))
        self._start_afresh()
        self.state = TrainingState(corpus_sha256=self.state.corpus_sha256, elapsed=self.state.elapsed)
        self._write_run_record()
        self.observer.on_start(self._started_record())
        return True

    # -- state -----------------------------------------------------------------------------------

    def _captured_state(self) -> TrainingState:
        """The state with this moment's optimizer, hidden and RNG states (a collective under DDP)."""
        return replace(
            self.state,
            # all B rows, whatever the number of ranks, so that any world size can resume it
            hidden=self.dist.gather_rows(hidden_to_list(self.hidden)) if self.hidden is not None else [],
            optimizer=self.optimizer.state_dict(),
            # With averaging the checkpoint's weights are the average: the trained ones travel here.
            training_weights=(
                {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()} if self.average else {}
            ),
            average_updates=self.average.updates if self.average else 0,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        )

    def _restore(self, step: int, weights_path: Path, state: TrainingState) -> None:
        if state.corpus_sha256 != self.state.corpus_sha256:
            raise CheckpointError(
                f"{self.run.root} was trained on a different text (sha256 {state.corpus_sha256[:12]}…); "
                "resume it with the same corpus, or start a new run directory"
            )
        expected = self.run.last_record()["sha256"]  # a file damaged since it was written is refused
        loaded = load_model(weights_path, device=self.device, expected_sha256=expected)
        if self.average:
            self.average.model.load_state_dict(loaded.model.state_dict())
            self.average.updates = state.average_updates
            self.model.load_state_dict(state.training_weights)
        else:
            self.model.load_state_dict(loaded.model.state_dict())
        self.model.train()
        self.optimizer.load_state_dict(state.optimizer)
        hidden = self.dist.shard_rows(state.hidden) if state.hidden else None
        self.hidden = hidden_from_list(hidden, self.model.config.cell, self.device) if hidden else None
        torch.set_rng_state(state.torch_rng)
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        # The live state keeps only the counters: the tensors above are captured afresh at each save.
        self.state = replace(state, hidden=[], optimizer={}, torch_rng=None, cuda_rng=[], training_weights={})
        self.resumed_from_step = self.checkpointed_step = step

    # -- progress --------------------------------------------------------------------------------

    def progress(self) -> float:
        """Fraction of the run done: the furthest along of the stopping rules in force."""
        c, bpe = self.config, self.batcher.batches_per_epoch
        fractions = []
        if c.max_steps:
            fractions.append(self.state.step / c.max_steps)
        if c.max_epochs:
            fractions.append((self.state.epoch * bpe + self.state.batch_index) / (c.max_epochs * bpe))
        if c.max_seconds:
            fractions.append(self.state.elapsed / c.max_seconds)
        return max(fractions) if fractions else 0.0

    def max_steps_estimate(self) -> int | None:
        p = self.progress()
        return max(self.state.step, round(self.state.step / p)) if p > 0 else self.config.max_steps

    def _snapshot(self) -> Snapshot:
        p = self.progress()
        return Snapshot(
            step=self.state.step,
            max_steps=self.max_steps_estimate(),
            epoch=self.state.epoch,
            train_loss=self.state.train_loss,
            val_loss=self.state.last_val_loss,
            best_val_loss=self.state.best_val_loss,
            learning_rate=self.optimizer.param_groups[0]["lr"],
            chars_per_second=self.chars_per_second(),
            elapsed_seconds=self.state.elapsed,
            eta_seconds=self.state.elapsed * (1 - p) / p if 0 < p < 1 else 0.0,
        )

    def chars_per_second(self) -> float:
        trained = self.state.step * self.config.batch_size * self.config.seq_len
        return trained / self.state.train_seconds if self.state.train_seconds > 0 else 0.0

    # -- the loop --------------------------------------------------------------------------------

    @property
    def served_model(self) -> CharRNN:
        """The weights a checkpoint holds and evaluation and samples use: the average, if the run keeps one."""
        return self.average.model if self.average else self.model

    def evaluate(self) -> float | None:
        # In the training precision: on a CPU with bf16 an fp32 evaluation cost 3.8x as much (7.5 training
        # steps at 2x384, a dozen times a run), and a score moves by about 0.001 nats between the two.
        if len(self.val_data) < 2:
            return None
        if isinstance(self.eval_data, tuple):  # a sample of windows, each scored from a fresh state
            loss, _ = mean_cross_entropy(self.served_model, *self.eval_data, autocast_dtype=self.autocast_dtype)
        else:
            loss, _ = score_ids(self.served_model, self.eval_data, autocast_dtype=self.autocast_dtype)
        self.model.train()
        return loss

    def _eval_due(self, progress_before: float) -> bool:
        """Every eval_every steps; left out, each time progress crosses one of EVALUATIONS_PER_RUN even
        marks of the budget (for steps and epochs a pure function of the step: resumes evaluate alike)."""
        if self.config.eval_every:
            return self.state.step % self.config.eval_every == 0
        before = math.floor(progress_before * EVALUATIONS_PER_RUN)
        return math.floor(self.progress() * EVALUATIONS_PER_RUN) > before

    def _diagnose(self, diagnosis: Diagnosis | None) -> None:
        if diagnosis is not None and self.dist.is_main:
            self.diagnosis = diagnosis
            self.observer.on_diagnosis(diagnosis)

    def sample(self) -> str:
        # Inside the contract's bounds (only `charrnn train` with a seed near 2**32 or a huge sample length
        # would be outside).
        seed = (self.config.seed + self.state.step) % (MAX_SEED + 1)
        length = min(self.config.sample_length, MAX_LENGTH)
        request = SampleRequest(length=length, temperature=0.8, seed=seed)
        text = Sampler(self.served_model, self.vocab).generate(request)[0].text
        self.model.train()
        if self.average:
            self.average.model.eval()
        return text

    def _evaluate_and_report(self) -> bool:
        """Evaluate; return True if this is a new best validation loss."""
        val = self.evaluate()
        self.state.last_val_loss = val
        improved = val is not None and (self.state.best_val_loss is None or val < self.state.best_val_loss)
        if improved:
            self.state.best_val_loss = val
        if self.dist.is_main:
            self.observer.on_eval(self._snapshot(), self.sample())
            self._diagnose(self.doctor.evaluation(self.state.step, self.progress(), val))
        return improved

    def _checkpoint(self, is_best: bool) -> Path:
        state = self._captured_state()  # a collective under DDP: every rank takes part
        self.checkpointed_step = self.state.step
        if not self.dist.is_main:
            return self.run.step_paths(self.state.step)[0]
        stats = CheckpointStats(step=self.state.step, train_loss=self.state.train_loss,
                                val_loss=self.state.last_val_loss, is_best=is_best)
        weights = weights_bytes(self.served_model, self.vocab, stats.file_metadata())
        previous = (self.run.last_record() or {}).get("step")
        try:
            path = self.run.save(self.state.step, weights, state)
            # Without a validation score yet (or at all), the latest weights are the best we know.
            if is_best or self.state.best_val_loss is None:
                self.run.save_best(weights)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # atomic_write removed its temp file and last.json still names the previous checkpoint:
            # nothing half-written counts. Say so, rather than "training crashed: OSError".
            kept = f"the checkpoint of step {previous} is kept" if previous is not None else "no checkpoint is kept"
            raise DiskFullError(
                f"disk full: no space left on the device to write the checkpoint of step {self.state.step}; "
                f"{kept}. Free space in the data directory and start the job again"
            ) from None
        self.observer.on_checkpoint(
            CheckpointRecord.of_file(stats, path=str(path), size_bytes=len(weights), sha256=sha256_hex(weights))
        )
        return path

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        if self.state.batch_index == 0:
            self.hidden = None  # a new epoch starts new streams: nothing to carry
        with autocast(self.device.type, self.autocast_dtype):
            logits, hidden = self.net(x, self.hidden)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.average:
            self.average.update(self.model)
        self.hidden = detach_hidden(hidden)
        return self.dist.mean(loss.item(), self.device), float(grad_norm)

    def _check_divergence(self, loss: float, grad_norm: float) -> None:
        # A freshly initialised model scores about ln(V); far above that after warmup is a blow-up.
        ceiling = 2 * math.log(len(self.vocab)) + 1
        if not math.isfinite(loss) or not math.isfinite(grad_norm) or (
            self.state.step > self.config.warmup_steps and loss > ceiling
        ):
            what = (f"loss {loss:.4g}, gradient norm {grad_norm:.4g} (a model that guesses uniformly scores "
                    f"{math.log(len(self.vocab)):.2f})")
            self._diagnose(self.doctor.diverged(self.state.step, f"at step {self.state.step} the {what}"))
            raise TrainingDiverged(
                f"training diverged at step {self.state.step}: {what}. "
                f"Lower learning_rate (now {self.config.learning_rate:g}) or grad_clip "
                f"(now {self.config.grad_clip:g}), or switch cell to lstm/gru if it is rnn."
            )

    def _stop_reason(self) -> str | None:
        c = self.config
        if c.max_steps and self.state.step >= c.max_steps:
            return "max_steps"
        if c.max_epochs and self.state.epoch + self.state.batch_index / self.batcher.batches_per_epoch >= c.max_epochs:
            return "max_epochs"
        if c.max_seconds and self.state.elapsed >= c.max_seconds:
            return "max_seconds"
        return self.observer.should_stop()

    def _agreed_stop_reason(self) -> str | None:
        return self.dist.from_main(self._stop_reason())

    def _started_record(self) -> RunStarted:
        return RunStarted(
            num_parameters=self.model.num_parameters,
            vocab_size=len(self.vocab),
            device=str(self.device),
            precision="bf16" if self.autocast_dtype else "fp32",
            train_chars=len(self.train_data),
            val_chars=len(self.val_data),
            batches_per_epoch=self.batcher.batches_per_epoch,
            resumed_from_step=self.resumed_from_step,
            model=self.model.config.to_dict(),
            chosen=list(self.choice.reasons) if self.choice else [],
            chosen_training=self.choice.training if self.choice else {},
            reference_losses=self.reference_losses,
        )

    def train(self) -> RunResult:
        """The run, step by step until a stopping rule or a stop request: train on the next batch, re-size
        the model if its first steps call for it, report, evaluate and checkpoint when due; then the
        last evaluation and checkpoint."""
        c = self.config
        self.observer.on_start(self._started_record())
        stopped_by = self._agreed_stop_reason()
        while stopped_by is None:
            progress_before = self.progress()
            t0 = time.perf_counter()
            x, y = (self.dist.shard(t).to(self.device, non_blocking=True)
                    for t in self.batcher.batch(self.state.epoch, self.state.batch_index))
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(c, self.state.step, self.progress())
            loss, grad_norm = self._train_step(x, y)
            self.state.step += 1
            self.state.batch_index += 1
            if self.state.batch_index == self.batcher.batches_per_epoch:
                self.state.epoch, self.state.batch_index = self.state.epoch + 1, 0
            self._check_divergence(loss, grad_norm)
            self._diagnose(self.doctor.train_step(self.state.step, loss, self.progress()))
            self.state.train_loss = loss
            dt = time.perf_counter() - t0
            self.state.train_seconds += dt
            self.state.elapsed += dt
            # The run's own first steps may call for another size: it then starts again at step 0.
            if self.sizer and self._resized(dt):
                stopped_by = self._agreed_stop_reason()
                continue

            t1 = time.perf_counter()
            if self.state.step % c.log_every == 0:
                self.observer.on_metrics(self._snapshot())
            stopped_by = self._agreed_stop_reason()
            # The run's last step is evaluated and saved after the loop. A run interrupted here still makes
            # this step's evaluation and checkpoint: the run that resumes from it starts after them.
            last_step = stopped_by in STOPPING_RULES
            at_eval = self._eval_due(progress_before) and not last_step
            improved = self._evaluate_and_report() if at_eval else False
            at_checkpoint = (self.state.step % c.checkpoint_every == 0 or improved) and not last_step
            if at_checkpoint:
                self._checkpoint(is_best=improved)
            if at_eval or at_checkpoint:
                self.sizer = None  # the run has reported a score or saved its model: its size is settled
            self.state.elapsed += time.perf_counter() - t1
            stopped_by = stopped_by or self._agreed_stop_reason()

        # Interrupted (cancel, shutdown, lost lease): save where we are and nothing else, so that a
        # resumed run makes exactly the evaluations and checkpoints an uninterrupted one would.
        interrupted = stopped_by not in STOPPING_RULES
        ran = self.state.step > (self.resumed_from_step or 0)
        improved = self._evaluate_and_report() if ran and not interrupted else False
        if self.checkpointed_step == self.state.step:
            # Stopped right after this step's checkpoint (or resumed from the last step's): saving it
            # again would only lose its is_best.
            last = self.run.step_paths(self.state.step)[0]
        else:
            last = self._checkpoint(is_best=improved)
        if ran and not interrupted:  # after the checkpoint: an evaluation and its checkpoint report together
            self._diagnose(self.doctor.end(self.state.step))
        return RunResult(
            steps=self.state.step,
            epoch=self.state.epoch,
            train_loss=self.state.train_loss,
            val_loss=self.state.last_val_loss,
            best_val_loss=self.state.best_val_loss,
            chars_per_second=self.chars_per_second(),
            seconds=self.state.elapsed,
            checkpoint=str(self.run.best),
            last_checkpoint=str(last),
            num_parameters=self.model.num_parameters,
            stopped_by=stopped_by,
            device=str(self.device),
            precision="bf16" if self.autocast_dtype else "fp32",
            resumed_from_step=self.resumed_from_step,
            reference_losses=self.reference_losses,
            diagnosis=self.diagnosis,
        )


def _references(text: str, val_text: str | None, val_fraction: float) -> dict | None:
    """The unigram and bigram reference losses of this run's split (nats per character), or None."""
    refs = of_texts(text, val_text) if val_text is not None else of_text(text, val_fraction)
    return refs.to_dict() if refs else None


def held_out_sample(data: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The validation ids, or when longer than EVAL_WINDOWS windows of EVAL_WINDOW_CHARS, those windows
    spread evenly over them, as (inputs, targets) of shape (EVAL_WINDOWS, EVAL_WINDOW_CHARS)."""
    span = EVAL_WINDOW_CHARS + 1
    if len(data) <= EVAL_WINDOWS * span:
        return data
    starts = torch.linspace(0, len(data) - span, EVAL_WINDOWS).long()
    windows = data[starts.unsqueeze(1) + torch.arange(span).unsqueeze(0)]
    return windows[:, :-1].clone(), windows[:, 1:].clone()
