"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), in plain torch, without torchvision.

RECE's `execs/lpips_score.py` uses the `lpips` package (`lpips.LPIPS(net='alex', version='0.1')`)
on image pairs of the same file name in two folders, each read with OpenCV (BGR -> RGB), resized to
64x64 (`cv2.resize`, bilinear) and scaled to [-1, 1]. The `lpips` package imports torchvision, which
cannot be imported next to this torch, so this module implements the same network:

    d(x0, x1) = sum_l mean_hw( w_l . (n(F_l(s(x0))) - n(F_l(s(x1))))^2 )

with `s` LPIPS's scaling layer (shift [-.030, -.088, -.188], scale [.458, .448, .450]), `F_l` the
ReLU outputs of AlexNet's five conv layers (torchvision's `alexnet().features` slices [0:2], [2:5],
[5:8], [8:10], [10:12]), `n` the channel-wise unit normalization (eps 1e-10) and `w_l` the learned
1x1 linear weights of LPIPS v0.1 (`alex.pth`).

Two weight files, both standard and public:
- AlexNet ImageNet weights, torchvision's `alexnet-owt-7be5be79.pth` (`ALEXNET_URL`), looked up at
  `--alexnet_weights`, then torch hub's cache (`~/.cache/torch/hub/checkpoints/`, where torchvision
  puts it), downloaded there when absent and possible;
- LPIPS v0.1 linear weights `alex.pth` (in the `lpips` wheel at `lpips/weights/v0.1/alex.pth`, or
  `LPIPS_URL`), looked up at `--lpips_weights`, then in an installed `lpips` package (found without
  importing it), then `~/.cache/rece/lpips_v0.1_alex.pth`, downloaded there when absent and possible.
"""
from __future__ import annotations

from pathlib import Path

from utils.io import file_sha256
from utils.errors import UserError
from utils.score import case_number_of, image_folder, list_images, run_folder, save_result, slug, weights_file

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"
LPIPS_CACHE_FILE = "lpips_v0.1_alex.pth"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)


def _build():
    import torch
    import torch.nn as nn

    class AlexNetFeatures(nn.Module):
        """torchvision's `alexnet().features` (same layer indices, so its state_dict keys load)."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))

        def forward(self, x):
            outs = []
            for lo, hi in ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)):
                for k in range(lo, hi):
                    x = self.features[k](x)
                outs.append(x)
            return outs

    class NetLinLayer(nn.Module):
        """LPIPS's 1x1 linear layer (dropout, then conv without bias): keys `model.1.weight`."""

        def __init__(self, chn):
            super().__init__()
            self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn, 1, 1, bias=False))

    class LPIPS(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
            self.net = AlexNetFeatures()
            for k, c in enumerate(CHANNELS):
                setattr(self, f"lin{k}", NetLinLayer(c))

        def forward(self, in0, in1):
            """Distances (N,) between image batches in [-1, 1], shape (N, 3, H, W)."""
            f0 = self.net((in0 - self.shift) / self.scale)
            f1 = self.net((in1 - self.shift) / self.scale)
            total = 0
            for k, (a, b) in enumerate(zip(f0, f1)):
                a = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
                b = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
                total = total + getattr(self, f"lin{k}").model((a - b) ** 2).mean(dim=[2, 3], keepdim=True)
            return total.reshape(-1)

    return LPIPS()


def _installed_lpips_weights() -> Path | None:
    """`alex.pth` inside an installed `lpips` package, located without importing it (it needs torchvision)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "weights" / "v0.1" / "alex.pth"
        if p.is_file():
            return p
    return None


def find_weights(alexnet_weights=None, lpips_weights=None, download: bool = True) -> tuple[Path, Path]:
    import torch

    how_alex = (f"download {ALEXNET_URL} into {Path(torch.hub.get_dir()) / 'checkpoints'} "
                f"(torchvision's AlexNet ImageNet weights) or pass --alexnet_weights FILE")
    how_lin = (f"download {LPIPS_URL} to ~/.cache/rece/{LPIPS_CACHE_FILE}, or `pip install --no-deps lpips==0.1.4` "
               f"(its weights file is read, its code is not imported), or pass --lpips_weights FILE")
    alex = weights_file(alexnet_weights, Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE, ALEXNET_URL,
                         f"AlexNet weights {ALEXNET_FILE}", "LPIPS backbone weights", how_alex, download)
    lin = weights_file(lpips_weights, _installed_lpips_weights() or Path.home() / ".cache" / "rece" / LPIPS_CACHE_FILE,
                        LPIPS_URL, "its v0.1 linear weights alex.pth", "LPIPS linear weights", how_lin, download)
    return alex, lin


def load_lpips(alexnet_weights=None, lpips_weights=None, device="cpu", download: bool = True):
    """(LPIPS module in eval mode, info with both weight files' names and sha256)."""
    import torch

    alex, lin = find_weights(alexnet_weights, lpips_weights, download)
    model = _build()
    try:
        sd = torch.load(alex, map_location="cpu", weights_only=True)
        feats = {k: v for k, v in sd.items() if k.startswith("features.")}
        model.net.load_state_dict(feats, strict=True)
        lin_sd = torch.load(lin, map_location="cpu", weights_only=True)
        missing = model.load_state_dict(lin_sd, strict=False)
        if any(k.startswith("lin") for k in missing.missing_keys) or missing.unexpected_keys:
            raise ValueError(f"missing {missing.missing_keys[:3]}, unexpected {missing.unexpected_keys[:3]}")
    except Exception as e:
        raise UserError(f"could not load LPIPS weights ({alex.name}, {lin.name}): {type(e).__name__}: {str(e)[:160]}")
    info = {"net": "alex", "version": "0.1",
            "alexnet_weights": {"file": alex.name, "sha256": file_sha256(alex)},
            "lpips_weights": {"file": lin.name, "sha256": file_sha256(lin)}}
    return model.to(device).eval(), info


def load_pair_image(path, size: int):
    """As RECE's script: cv2 read, BGR -> RGB, resize to size x size (bilinear; 0 keeps the size), to [-1, 1]."""
    import cv2
    import numpy as np
    import torch

    img = cv2.imread(str(path))
    if img is None:
        return None
    img = np.ascontiguousarray(img[:, :, ::-1])
    if size:
        img = cv2.resize(img, (size, size))
    return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


MIN_SIZE = 32  # AlexNet's receptive field: smaller images leave no feature map after its pools


def _check_pair_sizes(pairs) -> None:
    """With --size 0 the images are used as they are: both of a pair the same size, at least MIN_SIZE."""
    from PIL import Image

    for a, b in pairs:
        sizes = []
        for p in (a, b):
            try:
                with Image.open(p) as im:
                    sizes.append(im.size)
            except Exception:
                sizes.append(None)  # unreadable: listed and skipped later
        if None in sizes:
            continue
        if min(sizes[0] + sizes[1]) < MIN_SIZE:
            small = a if min(sizes[0]) < MIN_SIZE else b
            raise UserError(f"image {small} is {sizes[0 if small == a else 1][0]}x{sizes[0 if small == a else 1][1]}, "
                            f"smaller than AlexNet's {MIN_SIZE}x{MIN_SIZE} receptive field; pass --size 64 (resize)")
        if sizes[0] != sizes[1]:
            raise UserError(f"images {a} ({sizes[0][0]}x{sizes[0][1]}) and {b} ({sizes[1][0]}x{sizes[1][1]}) differ "
                            f"in size; pass --size 64 to resize both")


def compute_lpips(reference, generated, *, size: int = 64, alexnet_weights=None, lpips_weights=None,
                  download: bool = True, device=None, batch_size: int = 32, save: bool = True, save_path=None,
                  overwrite: bool = False) -> dict:
    """Mean LPIPS between same-named images of two folders; writes `lpips_vs_{reference}.json/.jsonl`."""
    import torch

    from utils.models import resolve_device

    if size < 0 or (0 < size < 32):
        raise UserError(f"--size must be 0 (keep) or at least 32 (AlexNet's receptive field), got {size}")
    device = resolve_device(device)
    ref_folder, gen_folder = image_folder(reference), image_folder(generated)
    ref_files = {p.name: p for p in list_images(ref_folder)}
    pairs = [(ref_files[p.name], p) for p in list_images(gen_folder) if p.name in ref_files]
    if not pairs:
        raise UserError(f"no image of {gen_folder} has a same-named image in {ref_folder}")
    if not size:
        _check_pair_sizes(pairs)
    model, info = load_lpips(alexnet_weights, lpips_weights, device, download)
    records, unreadable = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = [(a, b, load_pair_image(a, size), load_pair_image(b, size)) for a, b in pairs[i:i + batch_size]]
        unreadable += [b.name for a, b, x, y in chunk if x is None or y is None]
        chunk = [c for c in chunk if c[2] is not None and c[3] is not None]
        if not chunk:
            continue
        shapes = {tuple(c[2].shape) for c in chunk} | {tuple(c[3].shape) for c in chunk}
        groups = [chunk] if len(shapes) == 1 else [[c] for c in chunk]  # size 0 with mixed sizes: one by one
        for g in groups:
            with torch.no_grad():
                d = model(torch.stack([c[2] for c in g]).to(device), torch.stack([c[3] for c in g]).to(device))
            for (a, b, _, _), v in zip(g, d.tolist()):
                records.append({"file": b.name, "case_number": case_number_of(b.name), "lpips": v})
    if not records:
        raise UserError("no readable image pair")
    vals = torch.tensor([r["lpips"] for r in records], dtype=torch.float64)
    ref_name = run_folder(reference).resolve().name
    summary = {"metric": "lpips", "lpips": float(vals.mean()), "std": float(vals.std()) if len(vals) > 1 else 0.0,
               "n_pairs": len(records), "reference": str(ref_folder), "generated": str(gen_folder),
               "reference_name": ref_name, "size": size, "unreadable": unreadable, "lpips_model": info,
               "definition": "LPIPS v0.1 (AlexNet, linear-calibrated) between same-named images, each resized to "
                             "size x size with cv2 bilinear (0: unchanged) and scaled to [-1, 1]; mean over pairs"}
    if save:
        summary["summary_file"] = str(save_result(save_path or run_folder(generated), f"lpips_vs_{slug(ref_name)}",
                                                  summary, records, overwrite, settings_keys=("reference", "size")))
    return summary

