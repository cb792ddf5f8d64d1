"""Download the public prompt datasets into dataset/ and check their sha256 (docs/method.md §9).

    python dataset/fetch.py                 # all of them
    python dataset/fetch.py nudity.csv i2p.csv

The files ship in dataset/ already; this re-downloads and verifies them. Sources: the RECE
repository (CharlesGong12/RECE, pinned commit) for the CSVs; the Q16 prompt embeddings are its
pickled `prompts.p`, unpickled with a loader that accepts numpy arrays only and saved as
`q16_vit_l14_prompts.npy`, and its fine-tuned `prompts_finetuned.pt`, read with
`torch.load(weights_only=True)` and saved as `q16_vit_l14_prompts_finetuned.npy`. Files already present with the right checksum are skipped;
each file is written atomically, and a checksum mismatch leaves nothing behind.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.datasets import DATASET_DIR, SOURCES  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_path, make_dirs  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"files to fetch (default: all): {', '.join(SOURCES)}")
    p.add_argument("--dest", default=str(DATASET_DIR), help="destination folder (default dataset/)")
    return p.parse_args(argv)


class _NumpyOnly(pickle.Unpickler):
    """Unpickle numpy arrays and nothing else: a pickle that names any other callable is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a downloaded pickle")


def _convert_q16(raw: bytes) -> bytes:
    import numpy as np

    arr = np.asarray(_NumpyOnly(io.BytesIO(raw)).load())
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _convert_torch_parameter(raw: bytes) -> bytes:
    import numpy as np
    import torch

    t = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    buf = io.BytesIO()
    np.save(buf, t.detach().float().numpy())
    return buf.getvalue()


def fetch(name: str, dest: Path) -> str:
    url, sha = SOURCES[name]
    target = dest / name
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
        return "present"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise UserError(f"could not download {name} from {url} ({e})")
    if name.endswith(".npy"):
        data = _convert_torch_parameter(data) if url.endswith(".pt") else _convert_q16(data)
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise UserError(f"{name} from {url} has sha256 {got}, expected {sha}; nothing written")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return "downloaded"


def main(args):
    names = args.names or list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise UserError(f"unknown dataset {unknown[0]!r}; expected one of {', '.join(SOURCES)}")
    dest = make_dirs(args.dest, "--dest")  # a --dest under a file fails now, not after a download
    for n in names:
        print(f"{n}: {fetch(n, dest)}")


if __name__ == "__main__":
    run_cli(main, parse_args)
