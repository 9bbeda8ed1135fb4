"""The one exception type the CLI turns into a clean one-line error (exit code 2)."""


class LrptError(Exception):
    """A problem with the user's input or environment; the message must name the fix."""
