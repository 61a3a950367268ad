"""The one base class for input a user can fix.

Pure Python (the Blender extension vendors it).  Every error the core raises about the
user's input (an image, a scene file, a checkpoint, an option, a hub id, training data) is a
:class:`UserInputError`; the front ends (``da3p``, the worker, the add-on) catch this class
only, show its one-line message and, for ``da3p``, exit with code 2.  Any other exception is a
bug of ours: it is reported as an internal error (exit code 1), never as "bad input".

It subclasses ``ValueError`` so that code written against the older per-module errors (all
``ValueError`` subclasses) keeps working.
"""


class UserInputError(ValueError):
    """Input the user can fix; the message is one line naming the file or argument."""


class OptionError(UserInputError):
    """A reconstruction option (or a request field) with a bad value or an unknown name."""


class HubError(UserInputError):
    """A hub repo id that cannot be fetched (offline, not found, no access)."""


class DatasetError(UserInputError):
    """A scene folder of training or evaluation data that cannot be read (the message names
    the file): its cameras.json, COLMAP model, images or depth."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
