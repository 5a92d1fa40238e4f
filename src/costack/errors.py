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
        super().__init__(" ".join(text.split()))
