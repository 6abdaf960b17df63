"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (path, config, shapes, data). Message names the values."""


class ConfigError(UserError, ValueError):
    """An invalid model or experiment configuration."""


class ConversionError(UserError, ValueError):
    """A checkpoint that cannot be converted: missing/unexpected/misshapen keys, wrong model."""


class DataError(UserError, ValueError):
    """Unusable data: empty sources, mismatched tokenizer, bad prepared directory."""


class InputError(UserError, ValueError):
    """Model inputs that the model cannot take: ids out of range, sequence too long."""
