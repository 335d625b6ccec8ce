"""The project's exception types.

Every error a user can act on (bad data, a bad flag, a foreign checkpoint) is a
`JaxcifarError`; the command line prints its message as one line and exits 2,
with no traceback. Messages name the file or flag and say what was expected.
"""


class JaxcifarError(Exception):
    """Base of all errors whose message alone tells the user what to fix."""


class DataError(JaxcifarError):
    """A dataset file or folder is missing, malformed or inconsistent."""


class ConfigError(JaxcifarError):
    """A flag or configuration value is out of range or inconsistent."""


class CheckpointError(JaxcifarError):
    """A checkpoint is missing, truncated, foreign or incompatible with the run."""


class TrainingDiverged(JaxcifarError):
    """The loss became non-finite during training."""


def cannot_read(path: object, error: OSError) -> str:
    """`PATH: cannot read (REASON)`, the message for a file or folder the OS refused to read
    (no permission, a folder where a file was expected, a dangling link, a disk error)."""
    return f"{path}: cannot read ({error.strerror or error})"


def one_line(text: str) -> str:
    """`text` with each character that is not printable escaped (`\\n`, `\\udcff`): a message
    or a file name that stays one line of output, whatever a path in it holds (a newline split
    the line; a name that is not UTF-8, which Python holds as lone surrogates, printed as raw
    bytes, or failed to print where stdout is strict UTF-8, as PYTHONIOENCODING=utf-8 makes
    it)."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode() for char in text
    )


def os_error_text(error: OSError) -> str:
    """`REASON: PATH[: PATH2]`, an OSError the command did not expect (a full disk, a
    permission denied) as one line: the reason and the paths say it all."""
    paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
    return ": ".join([str(error.strerror or error), *paths])
