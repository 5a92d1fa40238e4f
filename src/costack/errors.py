"""The project's one error type for bad input."""


class CostackError(ValueError):
    """A problem with the user's input, reported as one line naming the parameter and the fix.

    The message starts with the parameter at fault (``assets:``, ``reference:``, ``aoi:``,
    ``inputs[2]:`` ...) and ends with what to do about it. Front ends (the Snakefile, the
    command line, the rule scripts) print it as ``costack: error: <message>`` and exit non-zero.
    """

    def __init__(self, parameter: str, problem: str, fix: str | None = None) -> None:
        self.parameter = parameter
        self.problem = problem
        self.fix = fix
        text = f"{parameter}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(printable(" ".join(text.split())))


def printable(text: object) -> str:
    """``text`` with its control characters (newline, carriage return, terminal escapes...)
    written as escapes: text from an item is data, and must neither start a line of its own
    (a forged log or verdict line) nor drive the terminal."""
    out = []
    for ch in str(text):
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


#: Errors from reading or writing files (OS, GDAL through rasterio, parsers) that front ends
#: report as one line instead of a traceback.
def file_errors() -> tuple[type[BaseException], ...]:
    """The exception types a step raises on a missing, unreadable, malformed or unwritable
    file: OSError, rasterio's errors and GDAL's own (``CPLE_*``), ValueError, KeyError."""
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return (OSError, RasterioError, CPLE_BaseError, ValueError, KeyError)


def describe(err: BaseException, limit: int = 240) -> str:
    """One line for an exception: its message, followed by its cause's when it only says to
    look there (rasterio's "Read failed. See previous exception for details.")."""
    text = " ".join(str(err).split()) or type(err).__name__
    cause = err.__cause__ or err.__context__
    if cause is not None and "previous exception" in text:
        text = " ".join(str(cause).split()) or text
    return text[:limit]
