"""Pieces shared by the CLIs: argparse types that check numbers, and the erasure CLIs' flags and run naming.

Argparse types (every CLI's numeric flags use them, so a bad value fails while parsing, before
anything loads, with argparse's exit code 2):
- `finite_float`, `nonneg_float`, `positive_float`: a float that is not NaN / inf (and >= 0, > 0);
- `int_range(low, high=None)`: an integer within bounds (counts, sizes, epochs, seeds), and the
  named bounds below (`batch_size_arg`, `image_size_arg`, `steps_arg`, ...).
(`--device` is checked by `utils.models.resolve_device` in each CLI's checks, not while parsing, so
that a command written for a GPU machine still parses on a laptop.)
They share `utils.errors.check_finite` / `check_count` with the library code.
"""
from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager

from utils.erase.concepts import CONCEPT_TYPES
from utils.errors import UserError, check_count, check_finite
from utils.io import slug  # noqa: F401  (re-exported for the CLIs)


def finite_float(text) -> float:
    """argparse type: a finite float ('nan', 'inf' are refused)."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def nonneg_float(text) -> float:
    """argparse type: a finite float >= 0."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative finite number, got {text!r}")
    return v


def positive_float(text) -> float:
    """argparse type: a finite float > 0."""
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def int_range(low: int | None = None, high: int | None = None):
    """argparse type factory: an integer with `low <= value <= high` (either bound may be None)."""
    def parse(text) -> int:
        try:
            v = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if (low is not None and v < low) or (high is not None and v > high):
            bounds = (f"between {low} and {high}" if low is not None and high is not None else
                      f"at least {low}" if low is not None else f"at most {high}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


# Bounds of the common integer flags: generous, but an absurd value fails at once instead of
# after the model has loaded (or allocating an image of 10^5 x 10^5 pixels).
MAX_IMAGE_SIZE = 4096
MAX_STEPS = 1000  # the SD schedulers have 1000 training timesteps
MAX_BATCH = 4096
MAX_SAMPLES = 10_000
MAX_EPOCHS = 1000
MAX_SEED = 2 ** 63 - 1
count_arg = int_range(1, None)
image_size_arg = int_range(8, MAX_IMAGE_SIZE)
steps_arg = int_range(1, MAX_STEPS)
batch_size_arg = int_range(1, MAX_BATCH)
samples_arg = int_range(1, MAX_SAMPLES)
epochs_arg = int_range(0, MAX_EPOCHS)
seed_arg = int_range(0, MAX_SEED)
nonneg_int_arg = int_range(0, None)
workers_arg = int_range(1, 256)


def add_edit_args(parser, *, lamb: float | None, preserve_scale: float | None) -> None:
    """Flags of the closed-form edit (docs/method.md §2), with the calling method's defaults."""
    parser.add_argument("--concepts", required=True,
                        help="comma-separated concepts to erase, e.g. 'nudity' or 'Kelly McKernan' (i2p expands)")
    parser.add_argument("--concept_type", required=True, choices=list(CONCEPT_TYPES),
                        help="kind of concept: decides guide, preserve set, templates, paper settings, validation")
    parser.add_argument("--guided_concepts", default=None,
                        help="comma-separated guide concepts (one for all or one per concept); "
                             "default ' ' (unconditional), 'art' for --concept_type art")
    parser.add_argument("--preserve_concepts", default=None,
                        help="comma-separated concepts to preserve; default: none (art: the other 1,733 artists)")
    parser.add_argument("--technique", default="replace", choices=["replace", "tensor"],
                        help="targets of the erase pairs (docs/method.md §2): replace = guide outputs, tensor = projection")
    parser.add_argument("--lamb", type=nonneg_float, default=lamb, help=f"lambda_1, the weight of W0 (default {lamb})")
    parser.add_argument("--erase_scale", type=nonneg_float, default=1.0, help="weight of the erase pairs (default 1)")
    parser.add_argument("--preserve_scale", type=nonneg_float, default=preserve_scale,
                        help="lambda_2, the weight of the preserve texts" +
                             (" (default max(0.1, 1/#preserve texts))" if preserve_scale is None
                              else f" (default {preserve_scale})"))
    parser.add_argument("--text_batch_size", type=batch_size_arg, default=64, help="texts per text-encoder batch")
    parser.add_argument("--uce_tokens", default="slice", choices=["slice", "last"],
                        help="rows of the UCE edit: slice = from the last word token to the end, aligned with the "
                             "guide (the RECE code, docs/method.md §2a); last = the last word token's row only, for "
                             "erase and preserve texts, no implicit '' preserve text (UCE 2025, docs/models.md)")
    parser.add_argument("--cache_dir", default=None,
                        help="where the base model's Gram sums are kept between runs (default $RECE_TOOLKIT_CACHE, "
                             "else ~/.cache/rece-toolkit; docs/models.md)")
    parser.add_argument("--no_cache", action="store_true",
                        help="neither read nor write the Gram cache: encode and sum everything in this run")


def check_scales(args, names=("lamb", "erase_scale", "preserve_scale", "regular_scale")) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            check_finite(float(v), f"--{name}")
            if v < 0:
                raise UserError(f"--{name} must be a non-negative number, got {v}")
    if getattr(args, "no_cache", False) and getattr(args, "cache_dir", None):
        raise UserError("--no_cache and --cache_dir contradict each other; give one of them")
    check_count(getattr(args, "text_batch_size", 1), "--text_batch_size")


@contextmanager
def stopwatch(store: dict, key: str, cpu: bool = False):
    """Add the wall time of the block to store[key] (seconds); with `cpu`, also the process's CPU time
    (all threads) to store[key without "_seconds" + "_cpu_seconds"]: on a shared machine the wall time
    grows with the load, the CPU time much less."""
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - t
        if cpu:
            k = key.removesuffix("_seconds") + "_cpu_seconds"
            store[k] = store.get(k, 0.0) + time.process_time() - c


def named_values(items: list[str], flag: str) -> dict[str, str]:
    """NAME=VALUE command-line items as a dict, in order; a malformed item or a repeated name is a UserError."""
    from utils.errors import UserError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
        if name in out:
            raise UserError(f"{flag} names {name!r} twice ({out[name]} and {value}); give each its own name")
        out[name] = value
    return out
