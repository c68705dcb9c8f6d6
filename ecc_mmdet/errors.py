"""The plugin's user-facing error types; importing nothing, so every layer can raise them."""


class ConfigError(ValueError):
    """A config is inconsistent or incomplete; the message says what to change."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset path in the config does not exist; the message says how to get the data."""


class UploadLimitError(RuntimeError):
    """A cloud limit is reached (uploads waiting for an update round, edges of an adaptation
    hub); the message names the limit. The request may be retried after a round."""


class UnknownEdgeError(LookupError):
    """An edge id the cloud never registered; the edge registers first."""
