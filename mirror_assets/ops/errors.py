"""What the operator's commands raise when they cannot go on."""


class CommandError(RuntimeError):
    """A command cannot go on; the message tells the operator what to do."""
