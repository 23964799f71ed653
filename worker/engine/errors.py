"""The engine's errors: each says what went wrong and what to change, and is safe to show a user.

    Exception
    └── EngineError            the user's problem: the message is the answer
        ├── ConfigError        a setting out of its bounds or inconsistent with another
        ├── CorpusError        a text that cannot be trained on or read by this model
        ├── InputError         a request a trained model cannot answer (a layer it lacks, too short a text)
        ├── CheckpointError    no checkpoint there, or not one of ours
        │   └── CorruptCheckpointError   its bytes differ from those recorded when it was written
        ├── DiskFullError      no room to write a checkpoint
        ├── DeviceError        the hardware a run asked for is not here
        └── TrainingDiverged   the loss blew up

One base, so the CLI, the training child and the generation server catch "a user's problem" in one
clause, by name, and let everything else through as what it is: a bug, logged with its traceback. It
is deliberately not a ValueError: a ValueError raised by a bug in charrnn or in a library (pydantic's
ValidationError is one) must never reach the user as their mistake.
"""

from __future__ import annotations


class EngineError(Exception):
    """Bad data, a bad checkpoint, a bad setting or a diverged run: the message is for the user. `param`
    names the request field it is about, where there is one (a prompt, a layer): the generation server
    passes it on, and /v1 shows it as OpenAI's `param`."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class ConfigError(EngineError):
    """A setting out of its bounds or inconsistent with another; the message names the setting and the fix."""


class CorpusError(EngineError):
    """A text that cannot be trained on (or that has characters a model never saw); the message says what
    is wrong and what to change."""


class InputError(EngineError):
    """A request a trained model cannot answer as asked: a layer or unit it does not have, a text too short."""


class CheckpointError(EngineError):
    """No checkpoint at the path, or a file that is not a readable charrnn checkpoint."""


class CorruptCheckpointError(CheckpointError):
    """The file's bytes differ from the sha256 recorded when it was written."""


class DiskFullError(EngineError):
    """A checkpoint could not be written for lack of space; the previous one is still in force."""


class DeviceError(EngineError):
    """The device, precision or number of processes a run asked for is not available on this machine."""


class TrainingDiverged(EngineError):
    """The loss became NaN/inf or exploded; the message says at which step and what to change."""
