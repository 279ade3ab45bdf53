"""The ways a run ends early; common.main() turns each into one line and an exit status
(a run stopped by SIGINT or SIGTERM is not an error: train() returns 130 or 143)."""


class UserError(Exception):
    """Bad input: main() prints the message as one line and exits with status 2."""


class Diverged(Exception):
    """A NaN or infinite loss: main() prints the message and exits with status 1."""


class Fault(Exception):
    """The machine failed the run (a full disk, an unwritable file): one line, exit status 1."""


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that could not be finished cleanly (pressed again during a save): exit 130."""


class RankLost(Fault):
    """Under torchrun, another rank is gone (killed, crashed, its node lost): this rank stops
    at once with one line (which rank, the last checkpoint), printed where it was detected; exit 1."""
