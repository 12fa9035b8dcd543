"""Errors a user or operator can cause. Each carries a one-line reason."""

# Exit codes (bbctl --help lists them): 0 done, 1 failed, 2 bad input, 4 refused for now.
EXIT_REFUSED = 4


class BBError(Exception):
    """A failure with a message fit to show as it is (no traceback).

    ``exit_code`` is what the CLI exits with; the codes are documented in
    ``bbctl --help``.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Refused(BBError):
    """Not now: the buffer is busy, in use, or its data is not safe yet (exit 4)."""

    exit_code = EXIT_REFUSED


class TestbedError(BBError):
    """The loopback test bed cannot be built or torn down as asked."""

    __test__ = False  # not a pytest test class, despite the name
