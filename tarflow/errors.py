"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback."""


class TarflowError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(TarflowError, ValueError):
    """An unknown preset or config field, or a value out of range."""


class InputError(TarflowError, ValueError):
    """Data or labels that do not fit the model (shape, channels, range, NaN/inf)."""


class CheckpointError(TarflowError):
    """A missing, truncated or incompatible saved model or training checkpoint."""


class DataError(TarflowError):
    """A dataset file that is missing, fails its checksum, cannot be downloaded or cannot be decoded."""
