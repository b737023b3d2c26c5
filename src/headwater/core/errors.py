"""One root exception with a subclass per component."""


class HeadwaterError(Exception):
    """Root of every error Headwater raises on purpose."""


class ConfigError(HeadwaterError):
    """A setting is missing or invalid."""


class AuthError(HeadwaterError):
    """A key is missing, unknown, revoked or lacks the role."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class CollectorError(HeadwaterError):
    """A request to the collector cannot be accepted as a whole."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LogError(HeadwaterError):
    """The event log failed or is unavailable."""


class BackPressureError(LogError):
    """The log is over its disk budget or the lake writer lags: retry later."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LakeError(HeadwaterError):
    """The lake (Iceberg tables) failed."""


class QueryError(HeadwaterError):
    """A query was refused, failed, or timed out."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ImportFileError(HeadwaterError):
    """A file given to `headwater import` cannot be read."""


class ProcessingError(HeadwaterError):
    """A stream processor is misdeclared, or failed in a way it cannot recover from."""


class SinkError(ProcessingError):
    """An external sink failed a write; worth retrying (unless it is a PermanentSinkError)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the remote system asked to wait (HTTP Retry-After), when it said."""


class PermanentSinkError(SinkError):
    """Retrying cannot help (the record or the request is refused): the record goes to the dead letters."""


class SourceError(HeadwaterError):
    """A source (Kafka topic, queue, file drop) is misconfigured or failed."""


class SourceUnavailable(SourceError):
    """The upstream system cannot be reached now; the source reconnects with back-off."""


class RecordError(SourceError):
    """One upstream record cannot be decoded or mapped; it goes to quarantine with this reason."""


class CheckError(HeadwaterError):
    """A data check is misdeclared (checks.toml), or cannot be run."""


class ModelError(HeadwaterError):
    """A SQL model is misdeclared (name, header, cycle, unknown table) or its build failed."""


class UpgradeError(ConfigError):
    """A data directory, database or settings file is in a format this version cannot use, or its upgrade failed."""


class AlertError(HeadwaterError):
    """An alert rule or condition is misdeclared (a name that is not unique or not allowed)."""
