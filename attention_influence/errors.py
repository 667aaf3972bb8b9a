"""One line of an error, for reports that must stay one line (load errors, the jobs' stderr)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of the message, stripped; the exception's class name if it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
