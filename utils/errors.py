"""One-line errors for the command-line scripts.

Library code raises `UserError` for bad input (a missing file, an unknown option value, a checkpoint
that does not fit). `run_cli` turns it into a single line on stderr and exit code 2, the same code
argparse uses for a bad flag, so a shell script or a scheduler can tell bad input from a crash.

The checks every CLI shares live here, so that a new CLI gets them by calling them:
- `run_cli(main, parse_args)`: `UserError` and operating-system errors (a path under a file, a
  read-only folder, a full disk) end in one line naming the path, exit 2.
- `check_finite(value, what)`: NaN / inf in a number, tensor, array or a dict of them is refused,
  naming `what` (a flag, a file, a key). Every loaded tensor and computed rate goes through it.
- `check_count(value, what, low=1, high=None)`: an integer count within bounds.
The argparse types built on these (`finite_float`, `int_range`, ...) are in `utils/cli.py`; the
run-folder claim is `utils.io.prepare_run_dir` / `prepare_resumable_run_dir`.
"""
from __future__ import annotations

import errno
import math
import numbers
import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, no traceback."""


def os_error_reason(e: OSError) -> str:
    """What went wrong in an operating-system error, without the path, e.g. 'No space left on device
    (the disk is full) [ENOSPC]'."""
    what = e.strerror or str(e) or type(e).__name__
    name = errno.errorcode.get(e.errno) if isinstance(e.errno, int) else None
    hint = {errno.ENOTDIR: " (a parent of it is a file, not a folder)",
            errno.EROFS: " (read-only file system)", errno.ENOSPC: " (the disk is full)",
            errno.EACCES: " (no permission)", errno.EPERM: " (no permission)",
            errno.EEXIST: " (a file stands where a folder is needed)"}.get(e.errno, "")
    return f"{what}{hint}" + (f" [{name}]" if name else "")


def os_error_message(e: OSError) -> str:
    """'<path>: <reason>' for an operating-system error (just the reason when it names no path)."""
    if e.filename is None:
        return os_error_reason(e)
    extra = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    return f"{e.filename}{extra}: {os_error_reason(e)}"


def run_cli(main: Callable, parse_args: Callable, argv=None) -> None:
    """Parse, run `main(args)`; a bad flag, `UserError` and `OSError` end in `<prog>: error: <one line>`, exit 2.

    argparse's own errors (an unknown flag, a value its type refuses) keep their message but lose
    the usage block above it, so that every refusal is one line (`--help` still shows the usage).
    """
    import contextlib
    import io

    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "rece"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parse_args(argv)
    except SystemExit as e:
        text = err.getvalue()
        lines = [l for l in text.splitlines() if l.strip()]
        if e.code == 2 and lines and lines[0].startswith("usage:"):
            print(lines[-1], file=sys.stderr)
        else:
            sys.stderr.write(text)
        raise
    sys.stderr.write(err.getvalue())
    try:
        main(args)
    except UserError as e:
        print(f"{prog}: error: {' '.join(str(e).split(chr(10)))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the file system said no: a path under a file, a read-only folder, a full disk
        print(f"{prog}: error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(2)


def _nonfinite(x) -> str | None:
    """'NaN' / 'inf' when `x` (number, tensor, array) holds one, else None."""
    if isinstance(x, bool) or x is None or isinstance(x, int):
        return None
    if isinstance(x, float):
        return None if math.isfinite(x) else ("NaN" if math.isnan(x) else "inf")
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        import torch

        if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
            return None
        if bool(torch.isfinite(x).all()):
            return None
        return "NaN" if bool(torch.isnan(x).any()) else "inf"
    if mod == "numpy":
        import numpy as np

        a = np.asarray(x)
        if a.dtype.kind not in "fc" or a.size == 0 or np.isfinite(a).all():
            return None
        return "NaN" if np.isnan(a).any() else "inf"
    return None


def check_finite(value, what: str):
    """Return `value` when it holds no NaN / inf, else raise `UserError` naming `what`.

    `value`: a number, a torch tensor, a numpy array, or a dict / list / tuple of them (the key or
    index is named too, e.g. "checkpoint run/uce.safetensors (key ...attn2.to_k.weight) holds NaN").
    """
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{what} (key {k})")
        return value
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{what} (item {i})")
        return value
    bad = _nonfinite(value)
    if bad:
        raise UserError(f"{what} holds {bad}; expected finite numbers")
    return value


def check_count(value, what: str, low: int = 1, high: int | None = None) -> int:
    """Return integer `value` when `low <= value <= high`, else raise `UserError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"{what} must be {bounds}, got {value}")
    return value
