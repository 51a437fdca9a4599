"""The one exception type that reaches users as a one-line message (CLI exit code 2)."""


class LatentlabError(Exception):
    """Bad input or configuration. The message says what to change; the CLI prints it on one line."""
