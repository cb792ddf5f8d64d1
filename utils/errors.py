"""One-line errors for the command-line scripts.

Library code raises `UserError` for bad input (a missing file, an unknown option value, a checkpoint
that does not fit). `run_cli` turns it into a single line on stderr and exit code 2, the same code
argparse uses for a bad flag, so a shell script or a scheduler can tell bad input from a crash.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""


def run_cli(main: Callable, parse_args: Callable, argv=None) -> None:
    """Parse, run `main(args)` and map `UserError` to `error: <message>` + exit 2."""
    args = parse_args(argv)
    try:
        main(args)
    except UserError as e:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "rece"
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
