"""``python -m resumeflow``: the command line."""

from .cli import entry

entry()
