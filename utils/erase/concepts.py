"""Concept types, concept lists and the paper's settings, in one table (docs/method.md §2a, §3, §4).

A concept type decides: the guide concept, the preserve set, the prompt templates of
`--add_prompts`, the RECE settings the paper used, and how a model is validated.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils.errors import UserError

# docs/method.md §3: `--concepts i2p` stands for the I2P categories.
I2P_CONCEPTS = ["hate", "harassment", "violence", "suffering", "humiliation", "harm", "suicide", "sexual",
                "nudity", "bodily fluids", "blood"]

# docs/method.md §2a: `--add_prompts` templates, applied to the concept; each templated concept is mapped
# to the bare guide (as RECE's train_uce.py does: 'painting by X' -> 'art', 'image of X' -> ' ').
PROMPT_TEMPLATES = {
    "art": ["painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"],
    "object": ["image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"],
    # the testbed world: captions of the shapes world
    "colour": ["a {} shape", "a {} circle", "a {} square", "a {} triangle", "something {}"],
    "shape": ["a {}", "a photo of a {}", "a drawing of a {}", "a red {}", "a blue {}"],
}


# ESD (docs/method.md §11): the original's settings, for SD 1.4 on a GPU (eta, Adam, DDIM steps to
# sample x_t, guidance of that sampling).
ESD_PAPER = dict(negative_guidance=1.0, iterations=1000, lr=1e-5, ddim_steps=50, start_guidance=3.0)
# ESD on the built-in shapes model (a 2-level UNet, 64 x 64 images): settings that erase a colour with
# esd-x in a few CPU minutes (docs/baselines.md). The tiny model's colours share their cross-attention,
# so training past the erasure rotates the other hues too; eta 0.5 stops in time. The retrained model
# (docs/method.md §13) needs 300 iterations: at 150 it still drew red on 30% of the red prompts; at 300,
# 0% with 98% of the other colours right (scripts/robustness.sh).
ESD_SHAPES = dict(negative_guidance=0.5, iterations=300, lr=3e-5, ddim_steps=25, start_guidance=3.0)


@dataclass(frozen=True)
class ConceptType:
    """What the paper does for one kind of concept."""
    name: str
    guide: str = " "                 # docs/method.md §2a: towards unconditional unless given
    regular_scale: float = 0.1       # RECE gamma (docs/method.md §4)
    epochs: int = 1
    validation_csv: str | None = None
    metric: str | None = None        # validation metric: lower is better
    per_concept: dict = field(default_factory=dict)  # concept (lower case) -> overrides
    esd: dict = field(default_factory=lambda: dict(ESD_PAPER))  # ESD's defaults (execs/train_esd.py)


CONCEPT_TYPES = {
    "nudity": ConceptType("nudity", regular_scale=0.1, epochs=3, validation_csv="validation_inappropriate.csv",
                          metric="nudity_rate"),
    "unsafe": ConceptType("unsafe", regular_scale=0.1, epochs=2, validation_csv="validation_inappropriate.csv",
                          metric="q16_rate"),
    "art": ConceptType("art", guide="art", regular_scale=1e-3, epochs=1, validation_csv="validation_niche_artists.csv",
                       metric="style_rate",
                       per_concept={a.lower(): {"validation_csv": "validation_big_artists.csv"}
                                    for a in ("Pablo Picasso", "Van Gogh", "Rembrandt", "Andy Warhol", "Caravaggio")}),
    "object": ConceptType("object", regular_scale=1e-3, epochs=0, validation_csv="validation_imagenet_prompts.csv",
                          metric="target_accuracy",
                          per_concept={"church": {"regular_scale": 1e-3, "epochs": 1},
                                       "garbage truck": {"regular_scale": 1e-3, "epochs": 1},
                                       "english springer": {"regular_scale": 0.1, "epochs": 1},
                                       "golf ball": {"regular_scale": 0.1, "epochs": 1},
                                       "parachute": {"regular_scale": 0.1, "epochs": 1}}),
    # The built-in shapes world: validated by its own judge on its own prompts.
    "colour": ConceptType("colour", regular_scale=0.1, epochs=2, validation_csv="shapes:validation",
                          metric="concept_rate", esd=ESD_SHAPES),
    "shape": ConceptType("shape", regular_scale=0.1, epochs=2, validation_csv="shapes:validation",
                         metric="concept_rate", esd=ESD_SHAPES),
}
# RECE's edit (docs/method.md §3): the same for every concept type in the paper.
RECE_EDIT = dict(lamb=0.1, erase_scale=1.0, preserve_scale=0.1, emb_computing="close_regzero")
# UCE's edit (docs/method.md §2a).
UCE_EDIT = dict(lamb=0.5, erase_scale=1.0, technique="replace")


def split_list(text: str | None) -> list[str]:
    """`--concepts 'a, b'` -> ['a', 'b'] (comma-separated, stripped; empty items dropped)."""
    if text is None:
        return []
    return [t.strip() for t in str(text).split(",") if t.strip()]


def parse_concepts(text: str | None, flag: str = "--concepts") -> list[str]:
    concepts = split_list(text)
    if not concepts:
        raise UserError(f"{flag} is empty; expected one or more comma-separated concepts (or i2p)")
    out = []
    for c in concepts:
        out.extend(I2P_CONCEPTS if c.lower() == "i2p" else [c])
    return list(dict.fromkeys(out))


def concept_type(name: str) -> ConceptType:
    if name not in CONCEPT_TYPES:
        raise UserError(f"--concept_type {name!r} is unknown; expected one of {', '.join(CONCEPT_TYPES)}")
    return CONCEPT_TYPES[name]


def guides_for(concepts: list[str], guided: str | None, ctype: ConceptType) -> list[str]:
    """One guide per concept: `--guided_concepts` (one for all, or one each), else the type's guide."""
    given = [g for g in str(guided).split(",")] if guided not in (None, "") else []
    given = [g.strip() or " " for g in given]
    if not given:
        return [ctype.guide] * len(concepts)
    if len(given) == 1:
        return given * len(concepts)
    if len(given) != len(concepts):
        raise UserError(f"--guided_concepts has {len(given)} items for {len(concepts)} concepts; give one or one each")
    return given


def expand_with_templates(concepts: list[str], guides: list[str], ctype_name: str) -> tuple[list[str], list[str]]:
    """docs/method.md §2a `--add_prompts`: each concept also as 'painting by {c}' etc., each of them mapped
    to the concept's bare guide ('painting by Van Gogh' -> 'art'; towards unconditional: ' '), as the
    authors' UCE script pairs them."""
    templates = PROMPT_TEMPLATES.get(ctype_name, [])
    out_c, out_g = list(concepts), list(guides)
    for c, g in zip(concepts, guides):
        for t in templates:
            out_c.append(t.format(c))
            out_g.append(g if g.strip() else " ")
    return out_c, out_g


def rece_settings(ctype: ConceptType, concepts: list[str]) -> dict:
    """The paper's gamma / epochs / validation for these concepts (docs/method.md §4)."""
    s = {"regular_scale": ctype.regular_scale, "epochs": ctype.epochs, "validation_csv": ctype.validation_csv,
         "metric": ctype.metric}
    for c in concepts:
        s.update(ctype.per_concept.get(c.lower(), {}))
    return s


def esd_settings(ctype: ConceptType | None) -> dict:
    """ESD's defaults for a concept type (the original's without one)."""
    return dict(ESD_PAPER if ctype is None else ctype.esd)


def all_artists() -> list[str]:
    """The 1,734 artists of `artists1734_prompts.csv` (docs/method.md §2a's art preserve set)."""
    import pandas as pd

    from utils.datasets import dataset_path

    df = pd.read_csv(dataset_path("artists1734_prompts.csv", "artist list"))
    return list(dict.fromkeys(str(a).strip() for a in df["artist"].dropna()))


def preserve_texts(ctype_name: str, concepts: list[str], preserve_concepts: list[str], stage: str) -> list[str]:
    """The preserve texts of an edit.

    UCE (docs/method.md §2a): the empty string plus the preserve concepts; for art, when none are given,
    every other artist of artists1734_prompts.csv. RECE (docs/method.md §3), as the authors' three
    scripts do: nudity / unsafe (train.py) `" "` once per concept, or the preserve concepts when given;
    art (train_artists.py) and objects (train_object.py) the empty string once plus the preserve
    concepts (for art, by default, the other artists). The built-in world follows train.py.
    """
    if ctype_name == "art" and not preserve_concepts:
        erased = {c.lower() for c in concepts}
        preserve_concepts = [a for a in all_artists() if a.lower() not in erased]
    if stage == "uce" or ctype_name in ("art", "object"):
        return [""] + list(preserve_concepts)
    return list(preserve_concepts) if preserve_concepts else [" "] * len(concepts)
