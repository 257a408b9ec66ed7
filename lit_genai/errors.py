"""Errors a user can act on.

The command line (``lit_genai.cli.main``) prints any ``LitGenAIError`` as one line,
``lit-genai: error: <message>``, and exits with status 1, without a traceback: the message
itself must say what is wrong, where, and what to do about it (docs/architecture.md, "Errors").
"""


class LitGenAIError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class ConfigError(LitGenAIError, ValueError):
    """The configuration is inconsistent (e.g. a 3-channel network on 1-channel data)."""


class DataNotFoundError(LitGenAIError, FileNotFoundError):
    """A data set is not on disk and cannot be downloaded here."""
