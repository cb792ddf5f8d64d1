"""Prompt files of the built-in shapes world for erasing one colour (or shape): evaluation and attack.

    python execs/shapes_data.py --concept red --save_path runs/demo/data

Writes SAVE_PATH/eval_prompts.csv (every colour x shape x --seeds, with ground-truth `colour` and
`shape` columns; docs/method.md §5 columns with the world's size, guidance and seeds), attack_prompts.csv (the
rows of eval_prompts.csv that ask for the concept) and ringabell_pairs.csv (sensitive / normal pairs
such as "a red circle" / "a circle", for attack_methods/RingABell.py). For a colour, also the prompt
sets of docs/method.md §13 that ask for it in three ways: explicit_prompts.csv ("a red circle"),
synonym_prompts.csv ("a scarlet square") and implicit_prompts.csv ("a star the colour of a tomato",
with a `held_out` column), each of at most --set_size rows, seeds after the evaluation table's, and
all_prompts.csv: the evaluation prompts and the three sets in one file (a `set` column: eval,
explicit, synonym, implicit; case numbers renumbered), for one generation run per model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.world import shapes  # noqa: E402
from utils.cli import count_arg, seed_arg  # noqa: E402
from utils.errors import UserError, check_count, run_cli  # noqa: E402
from utils.io import atomic_path  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concept", required=True, help=f"a colour ({', '.join(shapes.COLOURS)}) or a shape "
                                                     f"({', '.join(shapes.SHAPES)})")
    p.add_argument("--save_path", required=True, help="folder for the three CSV files")
    p.add_argument("--seeds", type=count_arg, default=4, help="images per colour x shape pair (default 4)")
    p.add_argument("--first_seed", type=seed_arg, default=0, help="seed of the first row (default 0)")
    p.add_argument("--set_size", type=count_arg, default=None,
                   help="rows of each explicit / synonym / implicit prompt set (default: all of them)")
    return p.parse_args(argv)


def ringabell_pairs(concept: str):
    """Sensitive prompts that name the concept, and the same prompts without it."""
    rows = []
    if concept in shapes.COLOURS:
        for shape in shapes.SHAPES:
            for t in shapes.TEMPLATES["colour_shape"]:
                rows.append((shapes.fill(t, colour=concept, shape=shape), shapes.fill(_drop_colour(t), shape=shape)))
    else:
        for colour in shapes.COLOURS:
            for t in shapes.TEMPLATES["colour_shape"]:
                rows.append((shapes.fill(t, colour=colour, shape=concept), shapes.fill(t, colour=colour, shape="shape")))
    return rows


def _drop_colour(template: str) -> str:
    return template.replace(" in {colour}", "").replace("{colour} ", "")


def main(args):
    if args.concept not in shapes.COLOURS and args.concept not in shapes.SHAPES:
        raise UserError(f"--concept {args.concept!r} is not in the shapes world; expected one of "
                        f"{', '.join(list(shapes.COLOURS) + list(shapes.SHAPES))}")
    check_count(args.seeds, "--seeds")
    check_count(args.first_seed, "--first_seed", low=0)
    import pandas as pd

    out = Path(args.save_path)
    table = shapes.evaluation_table(args.seeds, first_seed=args.first_seed)
    column = "colour" if args.concept in shapes.COLOURS else "shape"
    attack = table[table[column] == args.concept]
    pairs = pd.DataFrame(ringabell_pairs(args.concept), columns=["sensitive prompt", "normal prompt"])
    files = [("eval_prompts.csv", table), ("attack_prompts.csv", attack), ("ringabell_pairs.csv", pairs)]
    if column == "colour":
        first = args.first_seed + len(table)
        for kind in shapes.PROMPT_SETS:
            prompts = shapes.prompt_set(kind, args.concept, limit=args.set_size, first_seed=first)
            first += len(prompts)
            files.append((f"{kind}_prompts.csv", prompts))
        both = pd.concat([table.assign(set="eval", held_out=False)] + [df for _, df in files[3:]], ignore_index=True)
        both["case_number"] = range(len(both))
        files.append(("all_prompts.csv", both))
    for name, df in files:
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    print(f"wrote {len(table)} evaluation prompts, {len(attack)} attack prompts, {len(pairs)} Ring-A-Bell pairs"
          + "".join(f", {len(df)} {name[:-12]} prompts" for name, df in files[3:6]) + f" to {out}")


if __name__ == "__main__":
    run_cli(main, parse_args)
