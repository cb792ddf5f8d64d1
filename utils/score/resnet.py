"""torchvision's ResNet-50 with its IMAGENET1K_V2 weights, run without torchvision: the ImageNet
classifier of RECE's object erasure (the paper's Table 4).

torchvision does not import beside the torch this toolkit runs on, so the network is written here in
plain torch under torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer1.0.downsample.0`, `fc`) and the published state_dict file is read with
`torch.load(weights_only=True)`:

- weights: `resnet50-11ad3fa6.pth` (`RESNET50_URL`), torchvision's `ResNet50_Weights.IMAGENET1K_V2`
  (= `ResNet50_Weights.DEFAULT`, what RECE's `imageclassify.py` and `train_object.py` load; ImageNet
  top-1 80.858%). The 8 hex digits in the name are the start of the file's sha256, checked on load.
  Looked up at `--weights`, then in torch hub's cache (`torch.hub.get_dir()/checkpoints`, where
  torchvision keeps it), else downloaded there.
- network: ResNet v1.5 (the stride of a stage's first block sits on its 3x3 convolution), bottleneck
  blocks [3, 4, 6, 3] of widths 64-512 (x4 out), batch norm in eval mode (eps 1e-5), global average
  pool, a 2048 -> 1000 linear layer.
- preprocessing: torchvision's `ImageClassification(crop_size=224, resize_size=232)` on a PIL image
  (as RECE fed it): the shorter side resized to 232 with PIL's bilinear filter (on PIL images
  torchvision always antialiases; the longer side becomes int(232 * long / short)), a centre crop of
  224 x 224 at offsets round((size - 224) / 2), values scaled to [0, 1] and normalized with ImageNet's
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
- labels: torchvision's 1000 ImageNet category names (`imagenet_categories.txt` beside this file),
  e.g. 0 'tench', 217 'English springer'.
"""
from __future__ import annotations

from pathlib import Path

from utils.errors import UserError
from utils.io import file_sha256

RESNET50_FILE = "resnet50-11ad3fa6.pth"
RESNET50_URL = f"https://download.pytorch.org/models/{RESNET50_FILE}"
RESNET50_SHA256_PREFIX = "11ad3fa6"
RESIZE, CROP = 232, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYERS = (3, 4, 6, 3)
CATEGORIES_FILE = Path(__file__).with_name("imagenet_categories.txt")


def imagenet_categories() -> list[str]:
    names = CATEGORIES_FILE.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise UserError(f"{CATEGORIES_FILE} holds {len(names)} names; expected ImageNet's 1000")
    return names


def resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `size` as torchvision does."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def preprocess(image) -> "torch.Tensor":
    """(3, 224, 224) float tensor of a PIL image, as torchvision's IMAGENET1K_V2 transforms make it."""
    import numpy as np
    import torch
    from PIL import Image

    image = image.convert("RGB")
    w, h = resized_size(*image.size)
    if (w, h) != image.size:
        image = image.resize((w, h), Image.BILINEAR)
    top, left = int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0))
    image = image.crop((left, top, left + CROP, top + CROP))
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _build():
    import torch.nn as nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, width, stride):
            super().__init__()
            out = width * self.expansion
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or inplanes != out:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                                nn.BatchNorm2d(out))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet50(nn.Module):
        def __init__(self, num_classes: int = 1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = 64
            for i, (blocks, width) in enumerate(zip(LAYERS, (64, 128, 256, 512)), 1):
                stage = []
                for b in range(blocks):
                    stage.append(Bottleneck(inplanes, width, 2 if (b == 0 and i > 1) else 1))
                    inplanes = width * Bottleneck.expansion
                setattr(self, f"layer{i}", nn.Sequential(*stage))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet50()


def find_weights(path=None, download: bool = True) -> Path:
    """The IMAGENET1K_V2 state_dict file: `path`, else `$RECE_RESNET50`, else torch hub's cache, else
    downloaded into it."""
    import os

    import torch

    path = path or os.environ.get("RECE_RESNET50") or None

    from utils.score import weights_file

    how = f"download {RESNET50_URL} into {Path(torch.hub.get_dir()) / 'checkpoints'} or pass --weights FILE"
    return weights_file(path, Path(torch.hub.get_dir()) / "checkpoints" / RESNET50_FILE, RESNET50_URL,
                        f"torchvision's ResNet-50 IMAGENET1K_V2 weights {RESNET50_FILE}", "--weights",
                        how, download, needed_by="the object classifier")


def load_resnet50(path=None, device="cpu", download: bool = True, check_hash: bool = True):
    """(ResNet-50 in eval mode, {'file', 'sha256'}) from torchvision's published state_dict file."""
    import torch

    p = find_weights(path, download)
    sha = file_sha256(p)
    if check_hash and p.name == RESNET50_FILE and not sha.startswith(RESNET50_SHA256_PREFIX):
        raise UserError(f"{p} has sha256 {sha[:12]}..., not torchvision's IMAGENET1K_V2 file "
                        f"(sha256 {RESNET50_SHA256_PREFIX}...); delete it and fetch {RESNET50_URL} again")
    model = _build()
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise UserError(f"could not load ResNet-50 weights {p}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return model.to(device).eval(), {"file": p.name, "sha256": sha}
