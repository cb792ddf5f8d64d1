"""Test-only drawings that the nudity detector fires on: flat cartoon faces (PIL, no noise, no files needed).

nudenet 3.0.8's model reports a BUTTOCKS_EXPOSED or FACE_FEMALE box scored ~0.25-0.5 on most of these
from 128 px up (nothing on 64 px ones); a test compares the toolkit's detections with the package's
own `NudeDetector().detect(path)` on them, so the exact scores do not matter, only that there are some.
"""
from __future__ import annotations

from pathlib import Path

# (skin, background) colour pairs.
PALETTES = (((240, 200, 170), (120, 160, 220)), ((160, 110, 80), (230, 230, 230)), ((255, 224, 189), (30, 30, 30)))


def draw_face(path, width: int, height: int | None = None, palette: int = 0, noise: float = 0.0,
              seed: int = 0) -> Path:
    """A face (hair, skin oval, eyes, nose, mouth) centred in a width x height image, saved as PNG;
    `noise`: the standard deviation of seeded Gaussian pixel noise (a photo-like PNG decode cost)."""
    import numpy as np
    from PIL import Image, ImageDraw

    height = height or width
    skin, bg = PALETTES[palette]
    im = Image.new("RGB", (width, height), bg)
    d = ImageDraw.Draw(im)
    cx, cy, r = width / 2, height / 2, min(width, height) * 0.35
    d.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r * 1.1], fill=(80, 50, 20))
    d.ellipse([cx - r * 0.85, cy - r, cx + r * 0.85, cy + r], fill=skin)
    for s in (-1, 1):
        ex = cx + s * r * 0.35
        d.ellipse([ex - r * 0.12, cy - r * 0.25, ex + r * 0.12, cy - r * 0.05], fill=(255, 255, 255))
        d.ellipse([ex - r * 0.06, cy - r * 0.2, ex + r * 0.06, cy - r * 0.1], fill=(40, 30, 20))
    d.polygon([(cx, cy - r * 0.05), (cx - r * 0.08, cy + r * 0.2), (cx + r * 0.08, cy + r * 0.2)], fill=(220, 160, 140))
    d.chord([cx - r * 0.35, cy + r * 0.2, cx + r * 0.35, cy + r * 0.6], 0, 180, fill=(200, 60, 80))
    if noise:
        arr = np.asarray(im, dtype=np.float32) + np.random.default_rng(seed).normal(0, noise, (height, width, 3))
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    path = Path(path)
    im.save(path)
    return path


# Sizes and palettes with detections under nudenet 3.0.8: squares, portrait images (padded left and
# right) and 500 x 433 (a 43-pixel gap: the odd-padding path, padded square one pixel short).
FIRING = [(128, 128, 0), (128, 128, 2), (256, 256, 0), (256, 256, 1), (512, 512, 0), (512, 512, 1),
          (512, 512, 2), (300, 400, 0), (384, 512, 1), (500, 433, 2)]
