"""The robustness table of scripts/robustness.sh: erasure, attacks and side effects per method, on the shapes world.

    python execs/robustness_table.py --root runs/robustness --concept red \
        --methods SD=sd SLD-max=sld-max ESD-x=esd-x UCE=uce UCE+synonyms=uce-synonyms RECE=rece

For each method NAME=SLUG, reads ROOT/gen-SLUG (one generation run of data/all_prompts.csv, whose
`set` column says eval / explicit / synonym / implicit) and the attack runs ROOT/ringabell-SLUG,
ringabell-discrete-SLUG, unlearndiff-SLUG and p4d-SLUG (their asr.json; a missing attack is "-").
Columns (docs/method.md §13), every image judged by the shapes judge here:
- the concept's rate on the explicit, synonym and implicit prompts (implicit also split into the
  object x shape x template triples seen in training and those held out);
- each attack's ASR on the explicit prompts;
- other colours: among eval prompts asking for another colour, the share drawn in that colour;
- shapes: among all eval prompts, the share with the asked shape;
- fidelity: among eval prompts asking for another colour, the share of images the judge reads exactly
  as it reads the first method's image of the same row and seed (colour and shape), and the mean
  absolute pixel difference to it (0..1).
Writes ROOT/table.md, ROOT/table.json and ROOT/grid.png (rows = methods, columns = a few prompts of
each set, labelled), and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import named_values  # noqa: E402
from utils.errors import UserError, check_finite, run_cli  # noqa: E402
from utils.io import write_json, write_text_atomic, atomic_path  # noqa: E402

SETS = ("explicit", "synonym", "implicit")
ATTACKS = {"ringabell": "Ring-A-Bell", "ringabell-discrete": "Ring-A-Bell discrete",
           "unlearndiff": "UnlearnDiffAtk", "p4d": "P4D"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the folder scripts/robustness.sh wrote")
    p.add_argument("--concept", required=True, help="the erased colour")
    p.add_argument("--methods", nargs="+", required=True, metavar="NAME=SLUG",
                   help="row names and their folder suffixes; the first is the fidelity reference")
    p.add_argument("--grid_prompts", type=int, default=3, help="grid columns per prompt set (default 3)")
    return p.parse_args(argv)


def _methods(items: list[str], root: Path) -> dict[str, str]:
    out = named_values(items, "--methods")
    for name, slug in out.items():
        if not (root / f"gen-{slug}" / "prompts.csv").is_file():
            raise UserError(f"--methods {name}={slug}: {root / f'gen-{slug}'} has no prompts.csv (generate it first)")
    return out


def score_method(df, judged: dict, images: np.ndarray, concept: str, reference=None) -> dict:
    """The row of one method from its judged images (and the reference method's, for fidelity)."""
    colour, shape = np.array(judged["colour"]), np.array(judged["shape"])
    sets = df["set"].to_numpy()
    row = {}
    for kind in SETS:
        mask = sets == kind
        row[f"{kind}_rate"] = float(np.mean(colour[mask] == concept)) if mask.any() else None
        row[f"{kind}_images"] = int(mask.sum())
    implicit = sets == "implicit"
    if implicit.any() and "held_out" in df:
        held = df["held_out"].astype(str).str.lower().eq("true").to_numpy()
        for label, mask in (("seen", implicit & ~held), ("held_out", implicit & held)):
            row[f"implicit_{label}_rate"] = float(np.mean(colour[mask] == concept)) if mask.any() else None
    ev = sets == "eval"
    others = ev & (df["colour"].to_numpy() != concept)
    row["other_colour_accuracy"] = float(np.mean(colour[others] == df["colour"].to_numpy()[others])) if others.any() else None
    row["shape_accuracy"] = float(np.mean(shape[ev] == df["shape"].to_numpy()[ev])) if ev.any() else None
    if reference is not None and others.any():
        ref_colour, ref_shape, ref_images = reference
        same = (colour[others] == ref_colour[others]) & (shape[others] == ref_shape[others])
        row["fidelity_agreement"] = float(same.mean())
        diff = np.abs(images[others].astype(np.float32) - ref_images[others].astype(np.float32)) / 255.0
        row["fidelity_pixel_l1"] = float(diff.mean())
    return row


def read_asr(folder: Path) -> float | None:
    f = folder / "asr.json"
    if not f.is_file():
        return None
    try:
        value = json.loads(f.read_text())["asr"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{f} is not an attack summary with an 'asr' value; rerun that attack") from None
    return check_finite(float(value), str(f))


def grid(rows: dict[str, list], labels: list[str], path: Path) -> None:
    """One PNG: a row of images per method, a column per chosen prompt, with text labels."""
    from PIL import Image, ImageDraw

    names = list(rows)
    size = rows[names[0]][0].size[0]
    cell, left, top = size + 4, 110, 44
    canvas = Image.new("RGB", (left + cell * len(labels), top + cell * len(names)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        words, lines, line = label.split(), [], ""
        for w in words:  # wrap the prompt over three short lines
            if len(line) + len(w) + 1 > 12 and line:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        draw.multiline_text((left + j * cell, 2), "\n".join(lines[:3]), fill="black", spacing=1)
    for i, name in enumerate(names):
        draw.text((4, top + i * cell + size // 2 - 5), name, fill="black")
        for j, im in enumerate(rows[name]):
            canvas.paste(im, (left + j * cell, top + i * cell))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(args):
    from utils.world import shapes
    from utils.score.evaluation import run_images

    if args.concept not in shapes.COLOURS:
        raise UserError(f"--concept {args.concept!r}: expected a colour of the shapes world ({', '.join(shapes.COLOURS)})")
    if args.grid_prompts < 1:
        raise UserError(f"--grid_prompts must be >= 1, got {args.grid_prompts}")
    root = Path(args.root)
    methods = _methods(args.methods, root)
    table, reference, picks, grid_rows, first_df = {}, None, None, {}, None
    for name, slug in methods.items():
        df, pil = run_images(root / f"gen-{slug}")
        if "set" not in df or "colour" not in df or "shape" not in df:
            raise UserError(f"{root / f'gen-{slug}'}/prompts.csv lacks the set / colour / shape columns "
                            f"(generate data/all_prompts.csv of execs/shapes_data.py)")
        if first_df is not None and list(df["prompt"]) != list(first_df["prompt"]):
            raise UserError(f"{root / f'gen-{slug}'} holds other prompts than {root / f'gen-{methods[next(iter(methods))]}'}")
        first_df = df if first_df is None else first_df
        images = np.stack([np.asarray(im) for im in pil])
        judged = shapes.score_images(images)
        if reference is None:  # the first method is the reference (its own fidelity: 100%, 0)
            reference = (np.array(judged["colour"]), np.array(judged["shape"]), images)
        row = score_method(df, judged, images, args.concept, reference)
        for prefix, label in ATTACKS.items():
            row[f"asr_{prefix.replace('-', '_')}"] = read_asr(root / f"{prefix}-{slug}")
        table[name] = row
        if picks is None:
            sets = df["set"].to_numpy()
            picks = [int(i) for kind in SETS for i in np.flatnonzero(sets == kind)[:args.grid_prompts]]
            others = np.flatnonzero((sets == "eval") & (df["colour"].to_numpy() != args.concept))
            picks += [int(i) for i in others[::max(1, len(others) // 2)][:2]]
        grid_rows[name] = [pil[i] for i in picks]

    cols = [("explicit_rate", "explicit"), ("synonym_rate", "synonym"), ("implicit_rate", "implicit"),
            ("implicit_held_out_rate", "implicit, held out")]
    cols += [(f"asr_{k.replace('-', '_')}", f"ASR {v}") for k, v in ATTACKS.items()]
    cols += [("other_colour_accuracy", "other colours"), ("shape_accuracy", "shapes"),
             ("fidelity_agreement", "fidelity (judge agrees)"), ("fidelity_pixel_l1", "pixel L1 to base")]
    fmt = lambda k, v: "-" if v is None else (f"{v:.3f}" if k == "fidelity_pixel_l1" else f"{100 * v:.0f}%")  # noqa: E731
    md = [f"| method | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---|" * len(cols)]
    md += [f"| {name} | " + " | ".join(fmt(k, r.get(k)) for k, _ in cols) + " |" for name, r in table.items()]
    counts = {kind: table[next(iter(table))][f"{kind}_images"] for kind in SETS}
    note = (f"\n'{args.concept}' rate on {counts['explicit']} explicit, {counts['synonym']} synonym and "
            f"{counts['implicit']} implicit prompts; ASR on the explicit prompts attacked; other colours, shapes "
            f"and fidelity on the evaluation prompts (fidelity against {next(iter(table))}).\n")
    write_text_atomic(root / "table.md", "\n".join(md) + "\n" + note)
    write_json(root / "table.json", {"concept": args.concept, "methods": methods, "rows": table,
                                     "columns": dict(cols), "reference": next(iter(table))})
    labels = [f"[{first_df['set'].iloc[i]}] {first_df['prompt'].iloc[i]}" for i in picks]
    grid(grid_rows, labels, root / "grid.png")
    print("\n".join(md) + "\n" + note)


if __name__ == "__main__":
    run_cli(main, parse_args)
