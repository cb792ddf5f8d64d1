"""Mutation testing of a core module with mutmut's mutation operators, affordable on a small CPU.

    python tests/mutation.py utils/erase/closed_form.py tests/test_closed_form.py --out mutants_closed_form.json

Each mutant is one change mutmut 2.x makes to the module (an operator, a number, a keyword, a
string, an argument...). Most of a test run here is importing torch, transformers and diffusers, so
this process imports them once and runs the tests of each mutant in a fork of itself: the fork
imports the project afresh and so sees the mutated file. A mutant is killed when its tests fail (or
run past `--timeout_factor` times the unmutated run), survives when they pass. The file is restored
after every mutant and on exit (and on SIGTERM). The tests must not run from the same tree meanwhile:
they would see the mutants. Prints the score and each survivor's diff; `--out` keeps them as
JSON. `--only 3,17` reruns chosen mutants (e.g. the survivors after adding tests); `--sample 200
--seed 0` runs a seeded random sample of them instead of all (the score is then a sample's);
`--function select_best` only the mutants inside one top-level function or class. Each killed
mutant records the first test that failed (`killed_by`; pytest runs with -x): with the tests that
were there before listed first and named by `--baseline`, one run gives both scores.

The tiny pipeline of the `tiny_pipeline_dir` fixture (`tests/tiny.py`, preset "tiny", seed 0) is built
once here and copied for each mutant: building it is most of a short test run. No bytecode is
written, so a mutant never runs from another mutant's stale `.pyc`.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import shutil
import signal
import tempfile
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", help="the file to mutate, relative to the repository root")
    p.add_argument("tests", nargs="+", help="pytest arguments selecting the tests that guard it")
    p.add_argument("--only", default=None, help="comma-separated mutant numbers to run (default: all)")
    p.add_argument("--function", default=None,
                   help="mutate only the lines of this top-level function or class (e.g. select_best)")
    p.add_argument("--sample", type=int, default=None, help="run a random sample of this many mutants")
    p.add_argument("--shuffle", action="store_true", help="run the mutants in a random order (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="the seed of --sample and --shuffle")
    p.add_argument("--timeout_factor", type=float, default=5.0,
                   help="a mutant whose tests run longer than this times the clean run counts as killed")
    p.add_argument("--baseline", default=None,
                   help="comma-separated test path prefixes (e.g. tests/test_closed_form.py) that were there before: "
                        "list them first; the score of those alone is printed too (a timeout counts for them)")
    p.add_argument("--out", default=None, help="JSON file for the per-mutant results")
    return p.parse_args(argv)


class FirstFailure:
    """pytest plugin: writes the node id of the first failing test (or collection) to `path`."""

    def __init__(self, path: str):
        self.path = path

    def _record(self, report):
        if report.failed and not os.path.exists(self.path):
            Path(self.path).write_text(report.nodeid or "(collection)")

    def pytest_runtest_logreport(self, report):
        self._record(report)

    def pytest_collectreport(self, report):
        self._record(report)


def run_tests(tests: list[str], timeout: float | None) -> tuple[int, float, str | None]:
    """Exit status of pytest over `tests` in a fork (None timeout: wait), its seconds, and the first
    failing test's node id (None when none failed; "timeout" when killed)."""
    start = time.monotonic()
    fd, first = tempfile.mkstemp(prefix="mutation_first_failure_")
    os.close(fd)
    os.unlink(first)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.path[:0] = [str(REPO), str(REPO / "tests")]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest
            code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", *tests],
                                   plugins=[FirstFailure(first)]))
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            failed = Path(first).read_text() if os.path.exists(first) else None
            Path(first).unlink(missing_ok=True)
            return os.waitstatus_to_exitcode(status), time.monotonic() - start, failed
        if timeout is not None and time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            Path(first).unlink(missing_ok=True)
            return -signal.SIGKILL, time.monotonic() - start, "timeout"
        time.sleep(0.05)


def main(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO)
    import diffusers  # noqa: F401  (the slow imports, once, before any fork)
    import pandas  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(1)
    sys.dont_write_bytecode = True
    tiny_cache = Path(tempfile.mkdtemp(prefix="mutation_tiny_"))
    try:
        share_tiny_pipeline(tiny_cache)
        return run_mutants(args)
    finally:
        shutil.rmtree(tiny_cache, ignore_errors=True)


def share_tiny_pipeline(cache: Path) -> None:
    """Build the session fixture's tiny pipeline once; each fork's `build_random_pipeline(folder, "tiny",
    seed=0)` copies it (the same files: the build is seeded)."""
    sys.path.insert(0, str(REPO / "tests"))
    import tiny

    build = tiny.build_random_pipeline
    build(cache / "pipe", "tiny", seed=0)

    def build_or_copy(folder, preset="tiny", seed=0, *rest, **kwargs):
        if preset == "tiny" and seed == 0 and not rest and not kwargs:
            shutil.copytree(cache / "pipe", folder, dirs_exist_ok=True)
            return None
        return build(folder, preset, seed, *rest, **kwargs)

    tiny.build_random_pipeline = build_or_copy


def definition_lines(source: str, name: str) -> tuple[int, int]:
    """First and last line (1-based) of top-level function or class `name`, decorators included."""
    import ast

    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno
    sys.exit(f"--function {name}: no top-level function or class of that name")


def write_results(args, ids, results: list, complete: bool) -> tuple[int, int | None]:
    """(killed, killed by the --baseline tests alone); writes --out (JSON) when given."""
    killed = sum(r["status"] == "killed" for r in results)
    baseline_killed = None
    if args.baseline:
        prefixes = tuple(args.baseline.split(","))
        baseline_killed = sum(r["status"] == "killed" and (r["killed_by"] in ("timeout", None)
                                                         or r["killed_by"].startswith(prefixes)) for r in results)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "module": args.module, "tests": args.tests, "complete": complete, "killed": killed,
            "total": len(results), "of": len(ids), "function": args.function, "sample": args.sample,
            "seed": args.seed, "baseline": args.baseline, "baseline_killed": baseline_killed,
            "mutants": results}, indent=1))
    return killed, baseline_killed


def run_mutants(args) -> int:
    import mutmut

    path = REPO / args.module
    source = path.read_text()
    # `kill` (SIGTERM) ends the run through the `finally` below, which restores the file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"terminated; {args.module} restored"))
    ids = mutmut.list_mutations(mutmut.Context(source=source, filename=args.module))
    chosen = list(range(len(ids))) if not args.only else [int(i) for i in args.only.split(",")]
    if args.function:
        first, last = definition_lines(source, args.function)
        chosen = [n for n in chosen if first <= ids[n].line_number + 1 <= last]
    if args.sample is not None and args.sample < len(chosen):
        chosen = random.Random(args.seed).sample(chosen, args.sample)   # in random order: any prefix is a sample too
    elif args.shuffle:
        random.Random(args.seed).shuffle(chosen)

    code, clean_seconds, _ = run_tests(args.tests, None)
    if code != 0:
        sys.exit(f"the tests fail on the unmutated {args.module} (exit {code}); fix them first")
    results = []
    try:
        for n in chosen:
            mutated, count = mutmut.mutate(mutmut.Context(source=source, mutation_id=ids[n], filename=args.module))
            if count == 0:
                continue
            path.write_text(mutated)
            code, seconds, killed_by = run_tests(args.tests, args.timeout_factor * clean_seconds + 5)
            path.write_text(source)
            diff = "".join(l for l in difflib.unified_diff(source.splitlines(True), mutated.splitlines(True), n=0)
                           if l[:1] in "+-" and not l.startswith(("+++", "---")))
            status = "survived" if code == 0 else "killed"
            results.append({"mutant": n, "line": ids[n].line_number + 1, "status": status, "exit": code,
                            "killed_by": killed_by if status == "killed" else None,
                            "seconds": round(seconds, 1), "diff": diff})
            print(f"mutant {n:3d} line {ids[n].line_number + 1:4d}: {status}", flush=True)
            write_results(args, ids, results, complete=False)   # a stopped run keeps what it measured
    finally:
        path.write_text(source)
    killed, baseline_killed = write_results(args, ids, results, complete=True)
    if baseline_killed is not None:
        print(f"\n{args.module}: {baseline_killed}/{len(results)} mutants killed by {args.baseline} alone")
    print(f"\n{args.module}: {killed}/{len(results)} mutants killed "
          f"({100 * killed / max(1, len(results)):.0f}%) by {' '.join(args.tests)}")
    for r in results:
        if r["status"] == "survived":
            print(f"--- survivor {r['mutant']} (line {r['line']}):\n{r['diff']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
