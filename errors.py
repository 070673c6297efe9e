"""
How every command reports a mistake in what it was asked to do.

    from errors import UserError, cli

    @cli
    def main(argv=None):
        ...
        raise UserError("batch_size=0 must be >= 1")   # -> "error: batch_size=0 must be >= 1", exit code 2

A UserError is a problem with the input (an unknown key, a missing file, an impossible
combination), found before any work is lost: the command prints it as one line and exits
with code 2 (a subclass may set another exit_code: train.py's SaveError, a disk that filled
up, exits 1). Anything else is a bug in the repo and keeps its traceback. This module sits
below every other one (config, checkpoint, batches, distill, train and the tools all raise
it), so it imports nothing from the repo.
"""

import functools
import sys


class UserError(Exception):
    """A problem with what the user asked for; `cli` prints it as one line and exits 2."""


def cli(main):
    """Wrap a command's main(argv=None): a UserError becomes `error: <message>` on stderr
    and exit code 2, with no traceback."""

    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 2))

    return run
