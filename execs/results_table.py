"""Gather the stored results of several run folders into the paper's table (markdown and CSV).

    python execs/results_table.py runs/i2p-sd/nudity runs/i2p-rece/nudity --names SD,RECE --out runs/table-i2p

Rows are runs (named by folder, or `--names`); columns are the nudity table of the paper (armpits,
belly, buttocks, feet, breasts F, genitalia F, breasts M, genitalia M, total = sum of those eight)
and the nudity rate, then every other stored metric found in any run: Q16 rate, CLIP score,
FID / LPIPS against each reference, object accuracies, artist rates. Nothing is recomputed with a
model: the nudity columns come from `nudity_{classes}_t{threshold}.json`, or are recomputed from the
stored `nudity_detections.jsonl` when that threshold / class set was never summarized. Writes OUT.md
and OUT.csv (raw numbers; rates as fractions) and prints the markdown.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import finite_float  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import write_text_atomic  # noqa: E402
from utils.score import natural_key  # noqa: E402
from utils.score.nudity import (DEFAULT_CLASSES, DEFAULT_THRESHOLD, DETECTIONS_FILE, TABLE_COLUMNS,  # noqa: E402
                          TABLE_HEADER, check_threshold, load_detections, nudity_summary, resolve_classes,
                          summary_name)

NUDITY_COLUMNS = list(TABLE_HEADER) + ["nudity rate"]
METRIC_ORDER = ("q16", "clip_score", "fid", "lpips", "objects", "artists")
# The numbers each stored result contributes to the table (checked on read).
METRIC_VALUES = {"q16": ("rate",), "clip_score": ("clip_score",), "fid": ("fid",), "lpips": ("lpips",),
                 "objects": ("target_accuracy", "other_accuracy", "accuracy"),
                 "artists": ("target_rate", "other_accuracy")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (SD, UCE, RECE, attacked runs, ...)")
    p.add_argument("--out", required=True, help="output path without extension: writes OUT.md and OUT.csv")
    p.add_argument("--names", default=None, help="comma-separated row names, one per run (default: folder names)")
    p.add_argument("--threshold", type=finite_float, default=DEFAULT_THRESHOLD,
                   help=f"NudeNet threshold of the nudity columns (default {DEFAULT_THRESHOLD})")
    p.add_argument("--classes", default=DEFAULT_CLASSES, help=f"NudeNet class set (default {DEFAULT_CLASSES})")
    return p.parse_args(argv)


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _number(v, low=0.0, high=None) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= low
            and (high is None or v <= high))


def summary_problem(s) -> str | None:
    """What is wrong with a stored nudity summary (None when it holds a table and a rate that agree)."""
    if not isinstance(s, dict):
        return "not a JSON object"
    t = s.get("table")
    if not isinstance(t, dict):
        return "no 'table'"
    for c, _ in TABLE_COLUMNS:
        if not (_number(t.get(c)) and float(t[c]).is_integer()):
            return f"table column {c!r} is {t.get(c)!r}, not a count"
    if t.get("total") != sum(t[c] for c, _ in TABLE_COLUMNS):
        return f"table total {t.get('total')!r} is not the sum of its columns"
    if not _number(s.get("rate"), 0, 1):
        return f"rate {s.get('rate')!r} is not a number in [0, 1]"
    n, nude = s.get("n_images"), s.get("nude_images")
    if not (isinstance(n, int) and isinstance(nude, int) and 0 <= nude <= n and n > 0
            and abs(s["rate"] - nude / n) < 1e-9):
        return f"rate {s.get('rate')!r} is not nude_images / n_images ({nude!r} / {n!r})"
    return None


def nudity_of(run: Path, threshold: float, classes: str) -> dict | None:
    """The nudity summary of `run`: its stored summary when valid, else recomputed from the stored
    detections; a summary that is corrupt and cannot be recomputed is refused in one line."""
    path = run / f"{summary_name(threshold, classes)}.json"
    s = _load(path)
    problem = summary_problem(s) if path.exists() else None
    if path.exists() and problem is None:
        return s
    records = load_detections(run / DETECTIONS_FILE)
    if problem is not None and not records:
        raise UserError(f"stored result {path} is not a valid nudity summary ({problem}) and there are no "
                        f"stored detections to recompute it from; run compute_nudity_rate.py --root {run} again")
    if records and any("error" not in r for r in records):
        return nudity_summary(records, threshold, classes)
    return None


def other_metrics(run: Path) -> dict:
    """(column -> value) for every non-nudity result file in the run folder."""
    out = {}
    found = [(path, _load(path)) for path in sorted(run.glob("*.json"), key=lambda p: natural_key(p.name))]
    found = [(p, s) for p, s in found if isinstance(s, dict) and s.get("metric") in METRIC_ORDER]
    for p, s in found:
        bad = next((k for k in METRIC_VALUES[s["metric"]] if s.get(k) is not None and not _number(s.get(k), -math.inf)), None)
        if bad:
            raise UserError(f"stored result {p}: {bad} is {s.get(bad)!r}, not a finite number; compute it again")
    for path, s in sorted(found, key=lambda ps: METRIC_ORDER.index(ps[1]["metric"])):
        m = s.get("metric")
        if m == "q16":
            out["Q16 rate"] = s.get("rate")
        elif m == "clip_score":
            out["CLIP score"] = s.get("clip_score")
        elif m == "fid":
            out[f"FID vs {s.get('reference_name')}"] = s.get("fid")
        elif m == "lpips":
            out[f"LPIPS vs {s.get('reference_name')}"] = s.get("lpips")
        elif m == "objects" and s.get("target_class"):
            out[f"acc {s['target_class']}"] = s.get("target_accuracy")
            out[f"acc others ({s['target_class']})"] = s.get("other_accuracy")
        elif m == "objects":
            out["accuracy"] = s.get("accuracy")
        elif m == "artists" and s.get("target_artist"):
            out[f"{s['target_artist']} rate"] = s.get("target_rate")
            if s.get("other_accuracy") is not None:
                out[f"others kept ({s['target_artist']})"] = s.get("other_accuracy")
    return out


def _fmt(col: str, v) -> str:
    if v is None:
        return "-"
    if col in TABLE_HEADER:
        return str(int(v))
    if "rate" in col or col.startswith(("acc", "others kept")):
        return f"{100 * v:.2f}%"
    if col.startswith("LPIPS"):
        return f"{v:.4f}"
    return f"{v:.2f}"


def main(args):
    # 1. Check inputs.
    check_threshold(args.threshold)
    classes, labels = resolve_classes(args.classes)
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not r.is_dir():
            raise UserError(f"run folder {r} does not exist")
    names = [n.strip() for n in args.names.split(",")] if args.names else [r.resolve().name for r in runs]
    if len(names) != len(runs):
        raise UserError(f"--names gives {len(names)} names for {len(runs)} runs")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise UserError(f"two runs are named {dup!r}; give each its own name with --names")

    # 2. Gather.
    rows, extra_cols, detectors = [], [], {}
    for name, run in zip(names, runs):
        row = {"run": name}
        nud = nudity_of(run, args.threshold, classes)
        if nud is not None:
            t = nud["table"]
            row.update({h: t[c] for h, (c, _) in zip(TABLE_HEADER, TABLE_COLUMNS)})
            row["total"] = t["total"]
            row["nudity rate"] = nud["rate"]
            det = nud.get("detector") or {}
            label = f"{det.get('package')} {det.get('version')} ({det.get('model_file')})"
            detectors.setdefault(label, []).append(name)
        for col, v in other_metrics(run).items():
            row[col] = v
            if col not in extra_cols:
                extra_cols.append(col)
        rows.append(row)
    has_nudity = any("nudity rate" in r for r in rows)
    cols = ["run"] + (NUDITY_COLUMNS if has_nudity else []) + extra_cols
    if len(cols) == 1:
        raise UserError("no stored results in these run folders "
                        "(run compute_nudity_rate.py or an execs/ evaluator first)")

    # 3. Write markdown and CSV.
    md = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    md += ["| " + " | ".join(r["run"] if c == "run" else _fmt(c, r.get(c)) for c in cols) + " |" for r in rows]
    if has_nudity:
        md.append("")
        md.append(f"Nudity: NudeNet, an image counts for a class when a detection scores > {args.threshold:g}; "
                  f"nude when any of {classes} ({len(labels)} classes) does; total = sum of the eight class "
                  f"columns; detector: " + "; ".join(f"{d} for {', '.join(n)}" for d, n in detectors.items()) + ".")
    text = "\n".join(md) + "\n"
    out = Path(args.out)
    if out.suffix in (".md", ".csv"):
        out = out.with_suffix("")
    write_text_atomic(out.with_suffix(".md"), text)
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    write_text_atomic(out.with_suffix(".csv"), buf.getvalue())
    print(text, end="")
    print(f"saved: {out.with_suffix('.md')}, {out.with_suffix('.csv')}")
    return rows


if __name__ == "__main__":
    run_cli(main, parse_args)
