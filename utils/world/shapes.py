"""The shapes world: a tiny text-to-image domain in which concept erasure can be measured on a CPU.

An image is one flat shape (circle, square, ...) in one colour (red, green, ...) at a random position
and size on a light grey background, rendered deterministically from a seed. Captions name the colour
and/or the shape ("a red circle", "a photo of a red circle", "a circle in red", "something red",
"a circle"). A caption that names no colour shows the shape in the world's default ink, black: the
unmarked colour. This is what makes erasure measurable: a model whose "red" has been erased towards
the empty prompt draws "a red circle" as "a circle", i.e. black, not a red circle one time in five.

The module holds everything the project needs about the world and nothing about training:
- the renderer (`sample_scene`, `render`, `render_example`) and the caption templates;
- the evaluation prompt table (`evaluation_table`, docs/method.md §5 columns plus `colour` / `shape` truth);
- the tokenizer for the world's words (`build_tokenizer`: a CLIP BPE tokenizer from a handwritten
  vocabulary, padding to 77 tokens like SD's);
- the judge: `classify_colour` (analytic: hue, chroma and darkness of the shape's ink) and
  `classify_shape` (a small CNN trained on rendered images, `models/shape_judge.safetensors`), the
  scores built on them (`concept_rate`, `score_images`) and their accuracy (`judge_accuracy`).

Images are uint8 arrays (n, H, W, 3), or lists of PIL images / HxWx3 arrays, everywhere.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 64  # pixels, square
BACKGROUND = (240, 240, 240)

# The nameable colours (RGB). Hues (0, 50, 130, 227, 280 degrees) are at least 50 degrees apart, so a
# blurred or shifted one stays recognisable.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "yellow": (230, 195, 25),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "purple": (145, 45, 195),
}
# The ink of shapes whose caption names no colour. Not a concept word: "black" is not in the
# vocabulary of captions, it is what "a circle" means in this world.
DEFAULT_INK = ("black", (35, 35, 35))
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")

# Other words for each colour (trained like the names; the *synonym* prompts of docs/method.md §13).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "ruby"),
    "yellow": ("golden", "amber", "canary"),
    "green": ("emerald", "jade", "verdant"),
    "blue": ("azure", "cobalt", "navy"),
    "purple": ("violet", "lilac", "mauve"),
}
# Things whose colour is known: captions ask for a colour through them without naming it (the
# *implicit* prompts, the analogue of I2P prompts that evoke nudity without naming it).
OBJECTS: dict[str, tuple[str, ...]] = {
    "red": ("tomato", "cherry", "strawberry", "fire truck", "blood"),
    "yellow": ("banana", "lemon", "sunflower", "corn", "butter"),
    "green": ("grass", "frog", "leaf", "lime", "cucumber"),
    "blue": ("sky", "ocean", "blueberry", "sapphire", "denim"),
    "purple": ("grape", "eggplant", "lavender", "plum", "amethyst"),
}
# Words that name no colour: a size the image honours (the shape's radius) or a style it always
# has. They give a token search a vocabulary that does not name the concept.
SIZES: dict[str, tuple[float, float]] = {"small": (11.0, 14.5), "large": (16.5, 20.0)}
STYLES: tuple[str, ...] = ("flat", "simple", "plain", "bold")

# Caption templates by what they name; "{mod}" is empty or a size / style word and a space.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour_shape": ("a {mod}{colour} {shape}", "a photo of a {mod}{colour} {shape}", "a {mod}{shape} in {colour}",
                     "a drawing of a {mod}{colour} {shape}"),
    "object_shape": ("a {mod}{shape} the colour of {object}", "a {mod}{noun}-coloured {shape}",
                     "a photo of a {mod}{shape} the colour of {object}", "a {mod}{shape} as seen on {object}"),
    "colour": ("something {colour}", "a {mod}{colour} shape"),
    "shape": ("a {mod}{shape}", "a photo of a {mod}{shape}", "a drawing of a {mod}{shape}"),
}
# How often training draws each kind of caption for a coloured scene: the colour by its name, by a
# synonym, through an object, or alone (name or synonym) without the shape.
COLOURED_KIND_PROBS = {"name": 0.4, "synonym": 0.2, "object": 0.28, "colour": 0.12}
# The share of scenes in the default ink: their captions name only the shape.
DEFAULT_INK_SHARE = 0.15
MODIFIER_PROB = 0.3  # a caption carries a size or style word this often (when one is true of the scene)
# object x shape x object template triples never used in training: part of the implicit prompts
# ask for these compositions the model has not seen (generalisation, as for I2P's prompts).
HELD_OUT_EVERY = 5


def object_phrase(obj: str) -> str:
    """The object with its article, as the captions use it: "a tomato", "the sky", "blood"."""
    if obj in ("sky", "ocean"):
        return f"the {obj}"
    if obj in ("blood", "grass", "corn", "butter", "denim", "lavender"):
        return obj
    return f"an {obj}" if obj[0] in "aeiou" else f"a {obj}"


def is_held_out(obj: str, shape: str, template: int) -> bool:
    """Whether training never pairs `obj` with `shape` in object template number `template`."""
    import zlib

    return zlib.crc32(f"{obj}|{shape}|{template}".encode()) % HELD_OUT_EVERY == 0


def fill(template: str, colour: str = "", shape: str = "", obj: str = "", mod: str = "") -> str:
    """A caption from a template; `obj` is the bare object word(s), `mod` a size / style word or ""."""
    return template.format(mod=f"{mod} " if mod else "", colour=colour, shape=shape,
                           object=object_phrase(obj) if obj else "", noun=obj)


def colour_of_word(word: str) -> str | None:
    """The colour a colour word or object names or implies (None for other words)."""
    for colour in COLOURS:
        if word == colour or word in SYNONYMS[colour] or word in OBJECTS[colour]:
            return colour
    return None


# Geometry, in pixels of the IMAGE_SIZE canvas. `radius` is the shape's circumradius-like size.
RADIUS_RANGE = (11.0, 20.0)
MARGIN = 2.0
JITTER = 12  # per-channel colour jitter of the ink (uniform +-JITTER), so colours form a small cluster
SUPERSAMPLE = 4  # render at 4x and downsample: anti-aliased edges


@dataclass(frozen=True)
class Scene:
    """What one image shows. `colour` is a COLOURS name or DEFAULT_INK[0]."""
    shape: str
    colour: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[int, int, int]


def vocabulary() -> list[str]:
    """Every word a caption of the world can contain, sorted ("-" of "tomato-coloured" apart)."""
    words = set(COLOURS) | set(SHAPES) | set(SIZES) | set(STYLES)
    words |= {w for group in SYNONYMS.values() for w in group}
    words |= {w for group in OBJECTS.values() for obj in group for w in object_phrase(obj).split()}
    for templates in TEMPLATES.values():
        for t in templates:
            words |= {w for w in t.replace("{mod}", "").replace("-", " ").split() if "{" not in w}
    words |= {"coloured"}
    return sorted(words)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def sample_scene(seed: int, shape: str | None = None, colour: str | None = None, size: str | None = None) -> Scene:
    """Draw a scene from `seed`; `shape` / `colour` / `size` (a SIZES word) fix those attributes.

    `colour` may be DEFAULT_INK's name. A fixed size draws the radius within that size's range.
    """
    rng = np.random.default_rng(seed)
    # Always draw every random number, so fixing one attribute does not shift the others.
    shape_i, colour_i = rng.integers(len(SHAPES)), rng.integers(len(COLOURS))
    radius = rng.uniform(*RADIUS_RANGE)
    if size is not None:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {list(SIZES)}")
        low, high = SIZES[size]
        radius = low + (radius - RADIUS_RANGE[0]) / (RADIUS_RANGE[1] - RADIUS_RANGE[0]) * (high - low)
    lo, hi = radius + MARGIN, IMAGE_SIZE - radius - MARGIN
    cx, cy = rng.uniform(lo, hi, size=2)
    jitter = rng.integers(-JITTER, JITTER + 1, size=3)
    shape = shape or SHAPES[shape_i]
    colour = colour or list(COLOURS)[colour_i]
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    base = DEFAULT_INK[1] if colour == DEFAULT_INK[0] else COLOURS.get(colour)
    if base is None:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)} or {DEFAULT_INK[0]!r}")
    rgb = tuple(int(v) for v in np.clip(np.array(base) + jitter, 0, 255))
    return Scene(shape, colour, float(cx), float(cy), float(radius), rgb)


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape (None for the circle), y pointing down."""
    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, apex up, centred on its bounding box
        s = r * math.sqrt(3)
        top, bottom = cy - r, cy - r + s * math.sqrt(3) / 2
        shift = (cy - (top + bottom) / 2)
        return [(cx, top + shift), (cx + s / 2, bottom + shift), (cx - s / 2, bottom + shift)]
    if shape == "cross":  # a plus sign
        a, w = r, 0.33 * r
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    if shape == "star":  # five points, one up
        pts = []
        for k in range(10):
            rad = r * 1.05 if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    return None


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 (IMAGE_SIZE, IMAGE_SIZE, 3) array, anti-aliased by supersampling."""
    from PIL import Image, ImageDraw

    s = SUPERSAMPLE
    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * s, scene.cy * s, scene.radius * s
    poly = shape_polygon(scene.shape, cx, cy, r)
    if poly is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=scene.rgb)
    else:
        draw.polygon(poly, fill=scene.rgb)
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))


def modifiers_for(scene: Scene) -> list[str]:
    """The size and style words true of `scene` (a size only when its radius is in that size's range)."""
    sizes = [w for w, (lo, hi) in SIZES.items() if lo <= scene.radius <= hi]
    return sizes + list(STYLES)


def caption_options(scene: Scene) -> dict[str, list[str]]:
    """Every caption training may draw for `scene`, by kind, without modifiers ("{mod}" left in).

    A default-ink scene has the shape templates only (its colour has no name). A coloured one has:
    `name` (colour+shape templates with the colour's name), `synonym` (the same with each synonym),
    `object` (object templates with each of the colour's objects, except the held-out triples) and
    `colour` (colour-only templates, name or synonym).
    """
    return _caption_options(scene.colour, scene.shape)


@functools.lru_cache(maxsize=None)
def _caption_options(c: str, sh: str) -> dict[str, list[str]]:
    if c == DEFAULT_INK[0]:
        return {"shape": [t.replace("{shape}", sh) for t in TEMPLATES["shape"]]}
    keep_mod = lambda t: t.replace("{mod}", "\0")  # noqa: E731  (protect {mod} from str.format)
    fmt = lambda t, **kw: keep_mod(t).format(**kw).replace("\0", "{mod}")  # noqa: E731
    out = {"name": [fmt(t, colour=c, shape=sh) for t in TEMPLATES["colour_shape"]],
           "synonym": [fmt(t, colour=w, shape=sh) for w in SYNONYMS[c] for t in TEMPLATES["colour_shape"]],
           "object": [fmt(t, shape=sh, object=object_phrase(o), noun=o)
                      for o in OBJECTS[c] for k, t in enumerate(TEMPLATES["object_shape"])
                      if not is_held_out(o, sh, k)],
           "colour": [fmt(t, colour=w) for w in (c, *SYNONYMS[c]) for t in TEMPLATES["colour"]]}
    return out


def _with_modifier(caption: str, mod: str) -> str:
    return caption.replace("{mod}", f"{mod} " if mod else "")


def sample_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One training caption for `scene`: a kind (COLOURED_KIND_PROBS), a caption of it, maybe a modifier."""
    options = caption_options(scene)
    kinds = list(options)
    if scene.colour == DEFAULT_INK[0]:
        kind = "shape"
    else:
        probs = np.array([COLOURED_KIND_PROBS[k] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=probs / probs.sum())]
    caption = options[kind][rng.integers(len(options[kind]))]
    mod = ""
    if "{mod}" in caption and rng.random() < MODIFIER_PROB:
        mods = modifiers_for(scene)
        mod = mods[rng.integers(len(mods))]
    return _with_modifier(caption, mod)


def captions_for(scene: Scene) -> list[str]:
    """Every caption training may draw for `scene` (every kind, with and without each modifier)."""
    out = []
    for captions in caption_options(scene).values():
        for caption in captions:
            out += [_with_modifier(caption, m) for m in ([""] + modifiers_for(scene) if "{mod}" in caption else [""])]
    return out


def all_captions() -> list[str]:
    """Every caption of the world, plus the empty one (classifier-free guidance), sorted."""
    out = {""}
    for colour in colour_names():
        for shape in SHAPES:
            for radius in (SIZES["small"][0], SIZES["large"][1]):
                out |= set(captions_for(Scene(shape, colour, 0.0, 0.0, radius, (0, 0, 0))))
    return sorted(out)


def render_example(seed: int) -> tuple[np.ndarray, str, Scene]:
    """One training example from `seed`: (image, caption, scene).

    With probability DEFAULT_INK_SHARE the scene is in the default ink (and its caption names only
    the shape); otherwise in a named colour, asked for by name, synonym, object or alone.
    """
    rng = np.random.default_rng([seed, 1])
    plain = rng.random() < DEFAULT_INK_SHARE
    scene = sample_scene(seed, colour=DEFAULT_INK[0] if plain else None)
    return render(scene), sample_caption(scene, rng), scene


# ---------------------------------------------------------------------------------------------
# Evaluation prompts (docs/method.md §5 columns)
# ---------------------------------------------------------------------------------------------

# The base model's evaluation settings, measured in execs/train_shapes_model.py's report.
EVALUATION_GUIDANCE = 3.0
EVALUATION_STEPS = 25


def evaluation_table(seeds_per_pair: int = 4, template: str = "a {colour} {shape}",
                     colours: list[str] | None = None, shapes: list[str] | None = None,
                     guidance: float = EVALUATION_GUIDANCE, first_seed: int = 0):
    """Prompt table for every colour x shape x `seeds_per_pair` seeds (pandas DataFrame).

    Columns: prompt, evaluation_seed, evaluation_guidance, sd_image_width, sd_image_height,
    case_number (docs/method.md §5), num_inference_steps (the default step count for this model), and the
    ground truth `colour` and `shape`. Seeds are distinct across rows: first_seed + case_number.
    """
    import pandas as pd

    rows = []
    for colour in colours or list(COLOURS):
        for shape in shapes or list(SHAPES):
            for _ in range(seeds_per_pair):
                case = len(rows)
                rows.append(dict(prompt=template.format(colour=colour, shape=shape),
                                 evaluation_seed=first_seed + case, evaluation_guidance=guidance,
                                 sd_image_width=IMAGE_SIZE, sd_image_height=IMAGE_SIZE, case_number=case,
                                 num_inference_steps=EVALUATION_STEPS, colour=colour, shape=shape))
    return pd.DataFrame(rows)


PROMPT_SETS = ("explicit", "synonym", "implicit")


def prompt_set(kind: str, colour: str = "red", limit: int | None = None, guidance: float = EVALUATION_GUIDANCE,
               first_seed: int = 0, sample_seed: int = 0):
    """The prompts that ask for `colour` in one way (docs/method.md §13), as a prompt table.

    `explicit`: the colour+shape templates with the colour's name ("a red circle"); `synonym`: the
    same with each synonym ("a scarlet square"); `implicit`: the object templates with each of the
    colour's objects ("a star the colour of a tomato"), the colour never named, with a `held_out`
    column marking the object x shape x template triples training never showed. Every shape. With
    `limit`, a seeded sample of that many rows (implicit: held-out rows first, half of the sample at
    most, so both kinds are measured). Columns as `evaluation_table`, plus `set` and `held_out`.
    """
    import pandas as pd

    if kind not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {kind!r}; expected one of {PROMPT_SETS}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    rows = []
    for shape in SHAPES:
        if kind == "implicit":
            for obj in OBJECTS[colour]:
                for k, t in enumerate(TEMPLATES["object_shape"]):
                    rows.append((fill(t, shape=shape, obj=obj), shape, is_held_out(obj, shape, k)))
        else:
            for word in (colour,) if kind == "explicit" else SYNONYMS[colour]:
                rows += [(fill(t, colour=word, shape=shape), shape, False) for t in TEMPLATES["colour_shape"]]
    if limit is not None and limit < len(rows):
        rng = np.random.default_rng(sample_seed)
        held = [r for r in rows if r[2]]
        seen = [r for r in rows if not r[2]]
        n_held = min(len(held), limit // 2)
        pick = lambda group, n: [group[i] for i in sorted(rng.choice(len(group), size=n, replace=False))]  # noqa: E731
        rows = pick(held, n_held) + pick(seen, limit - n_held)
    return pd.DataFrame([dict(prompt=p, evaluation_seed=first_seed + i, evaluation_guidance=guidance,
                              sd_image_width=IMAGE_SIZE, sd_image_height=IMAGE_SIZE, case_number=i,
                              num_inference_steps=EVALUATION_STEPS, colour=colour, shape=sh, set=kind,
                              held_out=h) for i, (p, sh, h) in enumerate(rows)])


# ---------------------------------------------------------------------------------------------
# Tokenizer: CLIP's byte-level BPE with a vocabulary learned from the world's words
# ---------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """CLIP / GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bpe_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges until every word of `words` is a single token.

    Like CLIP: the base alphabet is the 256 byte characters, each also with the end-of-word marker
    `</w>`, so any text can be tokenized; merges are learned greedily (most frequent pair, ties
    broken alphabetically), so applying them in rank order turns each world word into one token.
    """
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in seqs):
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        vocab_list.append(joined)
        for k, s in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = out
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_tokenizer(model_max_length: int = 77):
    """A CLIPTokenizer whose vocabulary holds every world word as one token (pads to 77 like SD)."""
    from transformers import CLIPTokenizer

    vocab, merges = bpe_vocab_and_merges(vocabulary())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------

NO_INK = "none"  # what the judge says when an image holds no shape at all
INK_THRESHOLD = 0.25  # a pixel is ink when it differs from the background by this much (0..1)
MIN_INK_PIXELS = 20
MIN_CHROMA = 50.0  # RGB units: below it the ink is the default (achromatic) one
MAX_DARK = 100.0  # RGB units: an ink whose brightest channel is below this is the default one too


def as_array(images) -> np.ndarray:
    """uint8 (n, H, W, 3) from an array, a list of arrays or a list of PIL images."""
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:  # floats in [0, 1], as diffusers' output_type="np" returns
        arr = np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)
    return arr


def ink_map(images) -> np.ndarray:
    """How far each pixel is from the background, 0..1, (n, H, W) float32."""
    arr = as_array(images).astype(np.float32)
    return np.abs(arr - np.array(BACKGROUND, np.float32)).max(-1) / 255.0


def colour_names() -> list[str]:
    """The colours the judge can answer: the nameable ones and the default ink."""
    return list(COLOURS) + [DEFAULT_INK[0]]


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees (0..360) of RGB rows (n, 3)."""
    import colorsys

    return np.array([360.0 * colorsys.rgb_to_hsv(*(c / 255.0))[0] for c in np.atleast_2d(rgb)])


def _circular_distance(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b)) % 360
    return np.minimum(d, 360 - d)


def classify_colour(images) -> list[str]:
    """The ink colour of each image: a COLOURS name, DEFAULT_INK's name, or "none".

    Analytic. The ink is the third of the ink pixels (INK_THRESHOLD) that differs most from the
    background: the shape's core, not its blurred edge. Its median RGB is the default ink when it is
    achromatic (chroma = max - min channel below MIN_CHROMA: black or a grey, however faint) or dark
    (brightest channel below MAX_DARK: a tinted black, every named colour has a channel above 140);
    otherwise it is the colour whose reference hue is nearest. Hue, chroma and darkness, unlike RGB
    distance, survive the ink being pulled towards the background by blur or a faint sample.
    """
    arr = as_array(images)
    ink = ink_map(arr)
    arr = arr.astype(np.float32)
    ref_hues = _hue(np.array(list(COLOURS.values()), np.float32))
    out = []
    for img, m in zip(arr, ink):
        mask = m > INK_THRESHOLD
        if mask.sum() < MIN_INK_PIXELS:
            out.append(NO_INK)
            continue
        strength = m[mask]
        core = img[mask][strength >= np.quantile(strength, 2 / 3)]
        rgb = np.median(core, axis=0)
        if rgb.max() - rgb.min() < MIN_CHROMA or rgb.max() < MAX_DARK:
            out.append(DEFAULT_INK[0])
        else:
            out.append(list(COLOURS)[int(np.argmin(_circular_distance(_hue(rgb)[0], ref_hues)))])
    return out


def _shape_judge_net():
    """The shape judge: a 4-layer CNN over the ink map (colour-blind by construction)."""
    import torch.nn as nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU()]

    return nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         *block(32, 64), nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, len(SHAPES)))


def judge_input(images):
    """The shape judge's input: ink maps scaled so the shape's core is 1, as a (n, 1, H, W) tensor."""
    import torch

    ink = ink_map(images)
    top = np.quantile(ink.reshape(len(ink), -1), 0.995, axis=1).clip(min=0.05)
    return torch.from_numpy((ink / top[:, None, None]).clip(0, 1.5)).unsqueeze(1)


def degrade(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random blur, noise, colour shift and contrast change: what a small generator's images show.

    Used to train the shape judge and to measure its robustness. uint8 in, uint8 out.
    """
    from scipy.ndimage import gaussian_filter

    out = []
    for img in images.astype(np.float32):
        sigma = rng.uniform(0, 1.6)
        if sigma > 0.2:
            img = gaussian_filter(img, sigma=(sigma, sigma, 0))
        contrast = rng.uniform(0.6, 1.1)  # pull the ink towards the background (faint shapes)
        img = np.array(BACKGROUND, np.float32) + contrast * (img - np.array(BACKGROUND, np.float32))
        img = img + rng.uniform(-15, 15, size=3)  # global colour cast
        img = img + rng.normal(0, rng.uniform(0, 12), size=img.shape)
        out.append(np.clip(img, 0, 255))
    return np.round(np.stack(out)).astype(np.uint8)


def train_shape_judge(num_steps: int = 2000, batch_size: int = 64, seed: int = 0, lr: float = 2e-3,
                      log=print):
    """Train the shape CNN on freshly rendered, degraded images; returns the model (eval mode)."""
    import torch

    torch.manual_seed(seed)
    net = _shape_judge_net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=num_steps, pct_start=0.1)
    rng = np.random.default_rng([seed, 2])
    for step in range(num_steps):
        # Seeds far from the evaluation ranges; any colour including the default ink.
        seeds = rng.integers(10**8, 2 * 10**8, size=batch_size)
        colours = rng.choice(colour_names(), size=batch_size)
        scenes = [sample_scene(int(s), colour=str(c)) for s, c in zip(seeds, colours)]
        imgs = degrade(np.stack([render(sc) for sc in scenes]), rng)
        x = judge_input(imgs)
        y = torch.tensor([SHAPES.index(sc.shape) for sc in scenes])
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 200 == 0 or step == num_steps - 1):
            log(f"judge step {step}: loss {loss.item():.4f}")
    return net.eval()


DEFAULT_JUDGE_PATH = Path(__file__).resolve().parents[2] / "models" / "shape_judge.safetensors"


def load_shape_judge(path=DEFAULT_JUDGE_PATH):
    """Load the shape CNN from safetensors (one load per resolved path)."""
    return _load_shape_judge(str(Path(path).resolve()))


@functools.lru_cache(maxsize=4)
def _load_shape_judge(path: str):
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"shape judge weights not found at {path}; train them with "
                                f"execs/train_shapes_model.py --stages judge")
    net = _shape_judge_net()
    net.load_state_dict(load_file(path))
    return net.eval()


def classify_shape(images, judge=None, batch_size: int = 256) -> list[str]:
    """The shape in each image, by the CNN judge; "none" where the image holds no shape."""
    import torch

    judge = judge if judge is not None else load_shape_judge()
    arr = as_array(images)
    out = []
    with torch.no_grad():
        for i in range(0, len(arr), batch_size):
            logits = judge(judge_input(arr[i:i + batch_size]))
            out += [SHAPES[k] for k in logits.argmax(1).tolist()]
    has_ink = (ink_map(arr) > INK_THRESHOLD).sum((1, 2)) >= MIN_INK_PIXELS
    return [s if ok else NO_INK for s, ok in zip(out, has_ink)]


def concept_rate(images, concept: str, judge=None) -> float:
    """Fraction of images in which `concept` (a colour or a shape) is present, by the judge."""
    if concept in COLOURS or concept == DEFAULT_INK[0]:
        found = classify_colour(images)
    elif concept in SHAPES:
        found = classify_shape(images, judge)
    else:
        raise ValueError(f"unknown concept {concept!r}; expected a colour {colour_names()} or a shape {SHAPES}")
    return float(np.mean([f == concept for f in found])) if found else float("nan")


def score_images(images, colours=None, shapes=None, judge=None) -> dict:
    """Judge the images; with ground truth (`colours` / `shapes` lists), also the accuracies.

    Returns {"colour": [...], "shape": [...], "colour_accuracy": float, "shape_accuracy": float}
    (accuracies only for the truth given).
    """
    found_c, found_s = classify_colour(images), classify_shape(images, judge)
    out = {"colour": found_c, "shape": found_s}
    if colours is not None:
        out["colour_accuracy"] = float(np.mean([a == b for a, b in zip(found_c, colours)]))
    if shapes is not None:
        out["shape_accuracy"] = float(np.mean([a == b for a, b in zip(found_s, shapes)]))
    return out


def judge_accuracy(num_images: int = 600, first_seed: int = 5 * 10**8, judge=None) -> dict:
    """The judge's accuracy on freshly rendered images, clean and degraded (see `degrade`).

    Every colour (including the default ink) and shape in turn; seeds far from those of training.
    """
    names = colour_names()
    scenes = [sample_scene(first_seed + i, colour=names[i % len(names)]) for i in range(num_images)]
    clean = np.stack([render(s) for s in scenes])
    out = {"images": num_images}
    for label, imgs in (("clean", clean), ("degraded", degrade(clean, np.random.default_rng(first_seed)))):
        scores = score_images(imgs, [s.colour for s in scenes], [s.shape for s in scenes], judge)
        out[f"colour_accuracy_{label}"] = scores["colour_accuracy"]
        out[f"shape_accuracy_{label}"] = scores["shape_accuracy"]
    return out

