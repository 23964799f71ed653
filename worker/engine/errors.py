"""The engine's errors: each says what went wrong and what to change, and is safe to show a user.

One base, so the CLI and the worker catch "a user's problem" in one clause and let bugs through.
"""


class EngineError(ValueError):
    """Bad data, a bad checkpoint, a bad setting or a diverged run: the message is for the user."""


class DiskFullError(EngineError):
    """A checkpoint could not be written for lack of space; the previous one is still in force."""


class ConfigError(EngineError):
    """A setting out of its bounds or inconsistent with another; the message names the setting and the fix."""
