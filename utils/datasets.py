"""The public prompt CSVs (docs/method.md §9): where to find them, and how to fetch them.

They ship in the repository's `dataset/` folder, as the paper's repository ships them; `SOURCES`
below is the one list of their public sources and sha256 (a test checks every shipped file against
it), and `python dataset/fetch.py` re-downloads and verifies them. A name resolves to an existing
path as given, else to `dataset/<name>`.
"""
from __future__ import annotations

import os
from pathlib import Path

from utils.errors import UserError
from utils.io import REPO_ROOT

DATASET_DIR = REPO_ROOT / "dataset"
RECE_COMMIT = "403a67fd86dce6c124b88798340e001e625b28c9"
_RECE = f"https://raw.githubusercontent.com/CharlesGong12/RECE/{RECE_COMMIT}/dataset/"

# name -> (url, sha256)
SOURCES = {
    "artists1734_prompts.csv": (_RECE + "artists1734_prompts.csv", "7e31b4d01bdef4101d3c7e865e37b3f087459ec00e195059e245d70474b3ca63"),
    "big_artist_prompts.csv": (_RECE + "big_artist_prompts.csv", "a17a182d939aadaa641aa3fd495fe325d845d9677f6d86b6cc0b08e6d6beab33"),
    "coco_30k.csv": (_RECE + "coco_30k.csv", "87a3f463164120ca2d1efdbc251f443c7b0043214f767cd1852419d295db9ab5"),
    "coco_30k_val.csv": (_RECE + "coco_30k_val.csv", "418d22c428a29713687abfbaadb2a0af6b4620bc71fd6da5cf8601814ccf19bb"),
    "i2p.csv": (_RECE + "i2p.csv", "6c1821aeeb20beb276b4e20ce4c4b801f9106dc935bafc9f6fd5e12aa2651e6f"),
    "imagenette.csv": (_RECE + "imagenette.csv", "6f82b5a186f7c44e443052dac15bafe07b4d4e821e7435288642b5756d705b5c"),
    "nudity-ring-a-bell.csv": (_RECE + "nudity-ring-a-bell.csv", "2bd9056f41d92b82c87748db480416ddfc11c39ecf734f62a7ea4a51b9269740"),
    "nudity.csv": (_RECE + "nudity.csv", "0a40f6e63bca976513d1d56df71480239ba1eb5c7a9de4df2f535d80f6e0eccd"),
    "robust_imagenette.csv": (_RECE + "robust_imagenette.csv", "7af857c43bbcc43034a90f5de66786e3fc72d9ae3c068aab5fdc2ca3edbe4083"),
    "short_niche_art_prompts.csv": (_RECE + "short_niche_art_prompts.csv", "200e8c522d95ba8eac01dd43e589769aff0c0143beeb8925bb646a84641a7f26"),
    "validation_big_artists.csv": (_RECE + "validation_big_artists.csv", "832ce0ac4940fdcef0857415d37bdbbdf0f06a1edd6b66bcaf42577ddbdf3152"),
    "validation_imagenet_prompts.csv": (_RECE + "validation_imagenet_prompts.csv", "4ab01d9e98b0a23082b9cdbf52815cc639201fe6ba33b6ed8bbab58984c9fb2d"),
    "validation_inappropriate.csv": (_RECE + "validation_inappropriate.csv", "b5cb5a001bfa8dbc354983360e58d575d8791a5c05021ba24b9312452f9547ad"),
    "validation_niche_artists.csv": (_RECE + "validation_niche_artists.csv", "eddd6d575c90341090b07f5d4f45a46aa3ca084e339f3f4ff6333c9a18aaa52d"),
    "vangogh-ring-a-bell.csv": (_RECE + "vangogh-ring-a-bell.csv", "b1cc11de9c9f8c160822455c282717085b032a484bd7bd7907f1ac3863d827c7"),
    # Q16 prompt embeddings for CLIP ViT-L/14: the pickled float16 array utils/metrics/q16/prompts.p
    # of the same repository; dataset/fetch.py converts it to q16_vit_l14_prompts.npy.
    "q16_vit_l14_prompts.npy": (f"https://raw.githubusercontent.com/CharlesGong12/RECE/{RECE_COMMIT}/utils/metrics/q16/prompts.p",
                                "eb1426d84248dc6ed46b854e4b536a4d14fd2b9de89cd9e6ed3bbafd246d6f98"),
    # The fine-tuned Q16 prompts RECE's final evaluation uses (execs/Q16/eval.py of the same commit:
    # execs/Q16/data/ViT-L-14/prompts_finetuned.pt, a torch Parameter 2 x 768 float32, from the
    # unsafe-diffusion project), converted by dataset/fetch.py to a plain float32 .npy.
    "q16_vit_l14_prompts_finetuned.npy": (f"https://raw.githubusercontent.com/CharlesGong12/RECE/{RECE_COMMIT}/execs/Q16/data/ViT-L-14/prompts_finetuned.pt",
                                          "609e5a923a7d3bee7b3909ae29f34bc59158e141e545bbb105422349303c07a2"),
}


def dataset_path(name_or_path: str | os.PathLike, what: str = "dataset") -> Path:
    """Resolve a dataset name (e.g. `nudity.csv`) or path to an existing file, or fail in one line."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = p.name
    if (DATASET_DIR / name).is_file():
        return DATASET_DIR / name
    hint = " (it ships in dataset/; `python dataset/fetch.py` re-downloads it)" if name in SOURCES else ""
    raise UserError(f"{what} {name_or_path} not found{hint}")
