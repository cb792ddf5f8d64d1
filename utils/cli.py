"""Pieces shared by the erasure CLIs (execs/train_uce.py, train.py): flags, checks, run naming."""
from __future__ import annotations

import time
from contextlib import contextmanager

from utils.erase.concepts import CONCEPT_TYPES
from utils.errors import UserError
from utils.io import slug  # noqa: F401  (re-exported for the CLIs)


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
    parser.add_argument("--lamb", type=float, default=lamb, help=f"lambda_1, the weight of W0 (default {lamb})")
    parser.add_argument("--erase_scale", type=float, default=1.0, help="weight of the erase pairs (default 1)")
    parser.add_argument("--preserve_scale", type=float, default=preserve_scale,
                        help="lambda_2, the weight of the preserve texts" +
                             (" (default max(0.1, 1/#preserve texts))" if preserve_scale is None
                              else f" (default {preserve_scale})"))
    parser.add_argument("--text_batch_size", type=int, default=64, help="texts per text-encoder batch")
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
        if v is not None and not (v >= 0):  # also catches NaN
            raise UserError(f"--{name} must be a non-negative number, got {v}")
    if getattr(args, "no_cache", False) and getattr(args, "cache_dir", None):
        raise UserError("--no_cache and --cache_dir contradict each other; give one of them")
    if getattr(args, "text_batch_size", 1) < 1:
        raise UserError(f"--text_batch_size must be at least 1, got {args.text_batch_size}")


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
