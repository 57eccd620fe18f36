"""The one exception hierarchy of softprompt.

Every error a user can cause is a :class:`SoftPromptError` whose message says what was wrong
and where (file, row, field), so the CLI can print it as one line and exit non-zero::

    SoftPromptError
    ├── ConfigError          an option value is invalid or options conflict
    ├── ModelLoadError       a base model cannot be found or loaded
    ├── DataError            a dataset file, row or column is unusable
    ├── AdapterError         an adapter directory is missing, corrupt or unsafe
    │   ├── BaseModelMismatchError   the adapter was trained on another base model
    │   ├── AdapterNameError         a name that can never be an adapter's
    │   └── UnknownAdapterError      no adapter of that name is served (or no longer); a RequestError too
    ├── TrainingError        training cannot go on (non-finite loss, unwritable output)
    │   └── TrainingInterrupted      Ctrl-C: a checkpoint was saved, resume with --resume
    └── RequestError         a generation request is invalid (server and API)
        └── ContextOverflowError     prompt + new tokens + soft prompt exceed the context

The server maps these types to HTTP statuses; it never reads a message to decide.
"""

from __future__ import annotations

# Every character str.splitlines() breaks on; a message must print as exactly one line.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPED = str.maketrans({c: c.encode("unicode_escape").decode("ascii") for c in _LINE_BREAKS})


class SoftPromptError(Exception):
    """Base class: the CLI catches it and prints its message as a single line.

    Messages quote user data (file names, column names, config values) that may hold line
    breaks; ``str()`` escapes them so one error is always one line.
    """

    def __str__(self) -> str:
        return super().__str__().translate(_ESCAPED)


class ConfigError(SoftPromptError, ValueError):
    pass


class ModelLoadError(SoftPromptError):
    pass


class DataError(SoftPromptError, ValueError):
    pass


class AdapterError(SoftPromptError):
    pass


class BaseModelMismatchError(AdapterError):
    pass


class AdapterNameError(AdapterError):
    pass


class TrainingError(SoftPromptError):
    pass


class TrainingInterrupted(TrainingError):
    pass


class RequestError(SoftPromptError, ValueError):
    pass


class ContextOverflowError(RequestError):
    pass


class UnknownAdapterError(AdapterError, RequestError):
    """Raised by the registry (adapter admin) and by a request that names the adapter: both, by type."""
