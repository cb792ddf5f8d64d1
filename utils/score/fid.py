"""FID between two image folders: clean-fid's "clean" protocol, reimplemented without torchvision.

RECE's `execs/fid_score.py` calls `cleanfid.fid.compute_fid(dir1, dir2)` (mode "clean"). clean-fid,
pytorch-fid and torch-fidelity (and so torchmetrics' FID) all import torchvision, which cannot be
imported next to this torch, so the toolkit does the same computation itself:

1. Each image: decoded with PIL, converted to RGB, uint8 array; resized to 299x299 per channel as a
   float32 ('F' mode) PIL image with bicubic filter, clipped to [0, 255] (clean-fid's
   `make_resizer("PIL", False, "bicubic", (299, 299))`).
2. Features: the TensorFlow Inception-v3 (inception-2015-12-05) as the TorchScript file that
   clean-fid (and StyleGAN2-ADA) use, `inception-2015-12-05.pt`: `model.layers((x - 128) / 128)`, the
   2048-d pool3 features.
3. FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with `np.cov(rowvar=False)` covariances and
   scipy's `linalg.sqrtm` (pytorch-fid's / clean-fid's `frechet_distance`, eps 1e-6 retry, imaginary
   parts up to 1e-3 dropped).

The weights file is looked up at `--inception_path`, `$RECE_INCEPTION`, `~/.cache/rece/` and
`/tmp/` (where clean-fid downloads it on Linux); when absent it is downloaded from NVIDIA's URL
(`INCEPTION_URL`), and where that fails the error says how to fetch it.

Differences from clean-fid: images are listed non-recursively (the run's `imgs/` folder), not with a
recursive glob; features of a folder are cached in `fid_features.npz` next to the images (keyed by
file names, sizes and the weights' hash), so a reference folder is embedded once.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from utils.io import file_sha256
from utils.errors import UserError, check_finite
from utils.score import image_folder, list_images, load_rgb, run_folder, save_result, slug

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILE = "inception-2015-12-05.pt"
FEATURES_FILE = "fid_features.npz"


def inception_candidates() -> list[Path]:
    out = []
    if os.environ.get("RECE_INCEPTION"):
        out.append(Path(os.environ["RECE_INCEPTION"]))
    out += [Path.home() / ".cache" / "rece" / INCEPTION_FILE, Path("/tmp") / INCEPTION_FILE]
    return out


def _missing(where: str) -> UserError:
    return UserError(f"FID needs the Inception weights {INCEPTION_FILE} (clean-fid's TorchScript Inception-v3, "
                     f"{where}); download it with `wget {INCEPTION_URL} -O ~/.cache/rece/{INCEPTION_FILE}` "
                     f"on a machine with internet, or pass --inception_path FILE")


def find_inception(path=None, download: bool = True) -> Path:
    """The TorchScript Inception file: `path`, a known location, or a fresh download."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise _missing(f"not found at {p}")
        return p
    for p in inception_candidates():
        if p.is_file():
            return p
    if not download:
        raise _missing("not found at " + ", ".join(map(str, inception_candidates())))
    target = Path.home() / ".cache" / "rece" / INCEPTION_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        import shutil
        import urllib.request

        with urllib.request.urlopen(INCEPTION_URL, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(tmp, target)
    except Exception as e:
        if tmp.exists():
            tmp.unlink()
        raise _missing(f"not found locally, and the download failed: {type(e).__name__}")
    return target


def load_inception(path=None, device="cpu", download: bool = True):
    """(TorchScript module, info) for the FID feature network."""
    import torch

    p = find_inception(path, download)
    try:
        import warnings

        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, but it is the file's format
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(p), map_location=device).eval()
        _ = model.layers
    except Exception as e:
        raise UserError(f"{p} is not clean-fid's TorchScript Inception ({type(e).__name__}: {str(e)[:120]})")
    sha = file_sha256(p)
    return model, {"file": p.name, "sha256": sha}


def clean_resize(arr):
    """clean-fid "clean" resize of an HxWx3 uint8 array: per-channel float PIL bicubic to 299x299, clip."""
    import numpy as np
    from PIL import Image

    out = []
    for c in range(3):
        im = Image.fromarray(arr[:, :, c].astype(np.float32), mode="F").resize((299, 299), resample=Image.BICUBIC)
        out.append(np.asarray(im).clip(0, 255).reshape(299, 299, 1))
    return np.concatenate(out, axis=2).astype(np.float32)


def _prepare(path):
    import numpy as np

    im = load_rgb(path)
    return None if im is None else clean_resize(np.array(im))


def inception_features(files, model, device="cpu", batch_size: int = 32, workers: int = 2):
    """(features (n, d) float64, unreadable names): decoding + resizing run in a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    feats, unreadable = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i in range(0, len(files), batch_size):
            chunk = files[i:i + batch_size]
            arrays = list(pool.map(_prepare, chunk))
            unreadable += [p.name for p, a in zip(chunk, arrays) if a is None]
            arrays = [a for a in arrays if a is not None]
            if not arrays:
                continue
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)
            with torch.no_grad():
                f = model.layers.forward((x - 128) / 128)
            feats.append(f.reshape(len(arrays), -1).double().cpu().numpy())
    d = feats[0].shape[1] if feats else 0
    return (np.concatenate(feats) if feats else np.zeros((0, d))), unreadable


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) (pytorch-fid / clean-fid, D. Sutherland's stable form)."""
    import numpy as np
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))  # (clean-fid passes disp=False, deprecated in SciPy 1.16)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise UserError(f"FID: sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(f1, f2) -> float:
    import numpy as np

    if len(f1) < 2 or len(f2) < 2:
        raise UserError(f"FID needs at least 2 images per folder (got {len(f1)} and {len(f2)})")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def folder_features(root, model, info: dict, device="cpu", batch_size: int = 32, workers: int = 2,
                    cache: bool = True):
    """Features of a folder's images, reusing `fid_features.npz` beside them when it matches."""
    import numpy as np

    folder = image_folder(root)
    files = list_images(folder)
    if not files:
        raise UserError(f"no images in {folder}")
    key = hashlib.sha256("\n".join(f"{p.name}:{p.stat().st_size}" for p in files).encode()).hexdigest()
    cache_file = run_folder(root) / FEATURES_FILE
    if cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                if str(z["files_key"]) == key and str(z["extractor_sha256"]) == info["sha256"] \
                        and np.isfinite(z["features"]).all():  # a damaged cache is recomputed
                    return z["features"], [str(u) for u in z["unreadable"]], folder, True
        except (OSError, KeyError, ValueError):
            pass
    feats, unreadable = inception_features(files, model, device, batch_size, workers)
    check_finite(feats, f"the Inception features of {folder}")
    if cache:
        from utils.io import atomic_path

        with atomic_path(cache_file, suffix=".tmp.npz") as tmp:
            np.savez(tmp, features=feats, files_key=key, extractor_sha256=info["sha256"],
                     unreadable=np.array(unreadable, dtype=str))
    return feats, unreadable, folder, False


def compute_fid(reference, generated, *, inception_path=None, download: bool = True, device=None,
                batch_size: int = 32, workers: int = 2, cache: bool = True, save: bool = True, save_path=None,
                overwrite: bool = False) -> dict:
    """FID of `generated` against `reference` (run folders or image folders); writes `fid_vs_{reference}.json`."""
    from utils.models import resolve_device

    device = resolve_device(device)
    ref_folder, gen_folder = image_folder(reference), image_folder(generated)
    model, info = load_inception(inception_path, device, download)
    f_ref, bad_ref, _, hit_ref = folder_features(reference, model, info, device, batch_size, workers, cache)
    f_gen, bad_gen, _, hit_gen = folder_features(generated, model, info, device, batch_size, workers, cache)
    fid = fid_from_features(f_ref, f_gen)
    ref_name = run_folder(reference).resolve().name
    summary = {"metric": "fid", "fid": fid, "reference": str(ref_folder), "generated": str(gen_folder),
               "reference_name": ref_name, "n_reference": len(f_ref), "n_generated": len(f_gen),
               "feature_dim": int(f_ref.shape[1]), "unreadable": {"reference": bad_ref, "generated": bad_gen},
               "inception": info, "features_cached": {"reference": hit_ref, "generated": hit_gen},
               "definition": "clean-fid 'clean' mode: PIL bicubic float resize to 299, TorchScript "
                             "Inception-v3 (2015-12-05) pool3 features, Frechet distance"}
    if save:
        summary["summary_file"] = str(save_result(save_path or run_folder(generated), f"fid_vs_{slug(ref_name)}",
                                                  summary, None, overwrite, settings_keys=("reference",)))
    return summary
