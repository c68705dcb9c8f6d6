"""The plugin's user-facing error types; importing nothing, so every layer can raise them."""


class ConfigError(ValueError):
    """A config is inconsistent or incomplete; the message says what to change."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset path in the config does not exist; the message says how to get the data."""
