"""Errors a user can cause. The CLI prints these as one line (no traceback) and exits non-zero.

Every message names the offending value and says how to fix it.
"""


class UserError(Exception):
    """Base class: a problem with the user's input, not a bug in gpt3lab."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid (bad preset, bad --set key, inconsistent sizes)."""


class DataError(UserError):
    """A corpus, shard or data file is missing, empty, corrupt or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint directory is missing, truncated, corrupt or incompatible."""


class ContextOverflowError(UserError, ValueError):
    """More tokens than the model's context window (a prompt + max_tokens, or a sequence given to the model)."""
