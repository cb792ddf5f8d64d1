"""Prompt files of the built-in shapes world for erasing one colour (or shape): evaluation and attack.

    python execs/shapes_data.py --concept red --save_path runs/demo/data

Writes SAVE_PATH/eval_prompts.csv (every colour x shape x --seeds, with ground-truth `colour` and
`shape` columns; docs/method.md §5 columns with the world's size, guidance and seeds), attack_prompts.csv (the
rows of eval_prompts.csv that ask for the concept) and ringabell_pairs.csv (sensitive / normal pairs
such as "a red circle" / "a circle", for attack_methods/RingABell.py).
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
    return p.parse_args(argv)


def ringabell_pairs(concept: str):
    """Sensitive prompts that name the concept, and the same prompts without it."""
    rows = []
    if concept in shapes.COLOURS:
        for shape in shapes.SHAPES:
            for t in shapes.TEMPLATES["colour_shape"]:
                rows.append((t.format(colour=concept, shape=shape), _drop_colour(t).format(shape=shape)))
    else:
        for colour in shapes.COLOURS:
            for t in shapes.TEMPLATES["colour_shape"]:
                rows.append((t.format(colour=colour, shape=concept), t.format(colour=colour, shape="shape")))
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
    for name, df in [("eval_prompts.csv", table), ("attack_prompts.csv", attack), ("ringabell_pairs.csv", pairs)]:
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    print(f"wrote {len(table)} evaluation prompts, {len(attack)} attack prompts and {len(pairs)} Ring-A-Bell pairs "
          f"to {out}")


if __name__ == "__main__":
    run_cli(main, parse_args)
