"""The exceptions pipec raises, one tree by failure domain.

    PipecError                    base: every error pipec raises on purpose
    ├── UserError                 bad input from the user; the CLI exits with status 2
    │   ├── DatasetError          a trainset/devset that is missing, malformed or lacks fields
    │   ├── PipelineError         a pipeline that cannot be found or is declared wrongly
    │   ├── ConfigError           an unknown optimizer, --param, LM spec or setting
    │   └── StoreError            a flywheel store that is missing, not a store, or from a newer pipec
    │       └── StoreBusyError    another process holds the store file
    ├── LMError                   a language model failed to answer (experiments.lm_errors maps every
    │   │                         provider/DSPy/engine failure into this branch)
    │   ├── LMConfigError         a setting is wrong: fix it and run again (also a UserError: exit 2)
    │   │   ├── LMAuthError       no API key, or the key was rejected
    │   │   ├── LMNotFoundError   unknown provider or model
    │   │   └── LMUnreachableError  the provider or --api-base cannot be reached
    │   ├── LMBadRequestError     the provider refused this request (context length, bad parameter)
    │   ├── LMRateLimitError      rate limited or out of quota (transient: retried with backoff)
    │   ├── LMTimeoutError        timed out or the connection dropped (transient: retried)
    │   └── LMServerError         the provider failed (5xx; transient: retried)
    ├── InputRejectedError        an input guard blocked a pipeline input
    ├── BudgetExhaustedError           an optimizer ran out of its LM-call budget
    └── TrackingError             MLflow or the store failed (telemetry: warned, not raised to users)

Foreign exceptions are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BudgetExhaustedError",
    "ConfigError",
    "DatasetError",
    "InputRejectedError",
    "LMAuthError",
    "LMBadRequestError",
    "LMConfigError",
    "LMError",
    "LMNotFoundError",
    "LMRateLimitError",
    "LMServerError",
    "LMTimeoutError",
    "LMUnreachableError",
    "PipecError",
    "PipelineError",
    "StoreBusyError",
    "StoreError",
    "TrackingError",
    "UserError",
]


class PipecError(Exception):
    """Base of every error pipec raises on purpose."""


class UserError(PipecError):
    """Bad input from the user: the message says what to fix."""


class DatasetError(UserError):
    """A dataset file that is missing, malformed or lacks a needed field.

    Args:
        message: What is wrong and what to do.
        path: The file, when there is one.
        line: The 1-based line number in the file, when the error is on one line.
        field: The field concerned, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = path if line is None else f"{path}:{line}"
        if field is not None:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class PipelineError(UserError):
    """A pipeline that cannot be found, imported or is declared wrongly."""


class ConfigError(UserError):
    """An unknown optimizer, parameter, LM spec or other setting."""


class StoreError(UserError):
    """A flywheel store (experiments/store.py) that cannot be used as asked: missing, not a
    store, written by a newer pipec, or asked for rows it does not hold."""


class StoreBusyError(StoreError):
    """Another process holds the store file (DuckDB allows one writer, or readers only)."""


class LMError(PipecError):
    """A language model failed to answer (not found, not loadable, provider error).

    Args:
        message: One line: the model, what failed, what to do.
        model: The model string (as the user gave it), when known.
        flag: The option that chose the model (``--lm``, ``--judge-lm``), when known.

    Attributes:
        reason: A short stable name of the failure (``auth``, ``not_found``...), for tags.
        transient: Whether the same call may succeed if tried again later.
    """

    reason = "lm_error"
    transient = False

    def __init__(self, message: str, *, model: str | None = None, flag: str | None = None):
        self.model, self.flag = model, flag
        super().__init__(message)


class LMConfigError(LMError, UserError):
    """The LM cannot answer until a setting is fixed (key, model name, --api-base): exit 2."""

    reason = "lm_config"


class LMAuthError(LMConfigError):
    """No API key is set, or the provider rejected the one given."""

    reason = "lm_auth"


class LMNotFoundError(LMConfigError):
    """The provider or the model is unknown."""

    reason = "lm_not_found"


class LMUnreachableError(LMConfigError):
    """The provider or the ``--api-base`` server cannot be reached (refused, no such host)."""

    reason = "lm_unreachable"


class LMBadRequestError(LMError):
    """The provider refused this request (the prompt exceeds the context window, a bad parameter)."""

    reason = "lm_bad_request"


class LMRateLimitError(LMError):
    """The provider rate-limited the request or the quota ran out."""

    reason = "lm_rate_limit"
    transient = True


class LMTimeoutError(LMError):
    """The request timed out or the connection dropped."""

    reason = "lm_timeout"
    transient = True


class LMServerError(LMError):
    """The provider failed while answering (HTTP 5xx)."""

    reason = "lm_server"
    transient = True


class InputRejectedError(PipecError):
    """An input guard (``metrics.guards``) blocked a pipeline input; ``reasons`` says why.

    Args:
        message: The reasons, joined.
        reasons: One ``guard: reason`` line per failed guard.
    """

    def __init__(self, message: str, *, reasons: list[str] | None = None):
        self.reasons = list(reasons or [])
        super().__init__(message)


class BudgetExhaustedError(PipecError):
    """An optimizer spent its budget of LM calls."""


class TrackingError(PipecError):
    """MLflow or the DuckDB store failed. Telemetry never breaks a job: callers warn."""
