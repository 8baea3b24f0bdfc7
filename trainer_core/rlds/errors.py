"""The one error every episode reader raises, with a message a person can act on."""

from __future__ import annotations


class EpisodeError(ValueError):
    """An episode that cannot be used. ``str(err)`` names the file, the line, step or record,
    and the field, e.g. ``steps/000000.jsonl: line 3: action.command[1]: not a finite number
    (got "NaN")``."""


class NotTrainingData(EpisodeError):
    """A well-formed file that is not control data (a tool-use trace, a promotion audit record):
    recognised on purpose and skipped with this reason."""
