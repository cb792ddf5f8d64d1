"""dataset/fetch.py: checksums, atomic writes, the numpy-only unpickler for the Q16 prompts."""
import hashlib
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO / "dataset"


def load_fetch():
    spec = importlib.util.spec_from_file_location("fetch", REPO / "dataset" / "fetch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fetch_checks_sha256_and_skips_present(tmp_path, monkeypatch):
    fetch = load_fetch()
    url = (DATASETS / "nudity.csv").as_uri()
    sha = fetch.SOURCES["nudity.csv"][1]
    monkeypatch.setitem(fetch.SOURCES, "nudity.csv", (url, sha))
    assert fetch.fetch("nudity.csv", tmp_path) == "downloaded"
    assert hashlib.sha256((tmp_path / "nudity.csv").read_bytes()).hexdigest() == sha
    assert fetch.fetch("nudity.csv", tmp_path) == "present"
    # a file whose checksum differs is refused and nothing is written
    monkeypatch.setitem(fetch.SOURCES, "i2p.csv", (url, "0" * 64))
    with pytest.raises(UserError, match="sha256"):
        fetch.fetch("i2p.csv", tmp_path)
    assert not (tmp_path / "i2p.csv").exists() and not list(tmp_path.glob(".*tmp"))


def test_q16_conversion_accepts_arrays_only():
    fetch = load_fetch()
    arr = np.arange(6, dtype=np.float16).reshape(2, 3)
    out = np.load(io.BytesIO(fetch._convert_q16(pickle.dumps(arr))))
    assert out.dtype == np.float16 and (out == arr).all()

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        fetch._convert_q16(pickle.dumps(Evil()))


def test_every_shipped_dataset_has_its_listed_checksum():
    """The repository ships the public files in dataset/; each matches the one sha256 list."""
    fetch = load_fetch()
    shipped = sorted(p.name for p in DATASETS.iterdir() if p.suffix in (".csv", ".npy"))
    assert shipped == sorted(fetch.SOURCES)
    for name in shipped:
        assert hashlib.sha256((DATASETS / name).read_bytes()).hexdigest() == fetch.SOURCES[name][1], name


def test_q16_npy_conversion_reproduces_the_listed_checksum():
    fetch = load_fetch()
    arr = np.load(DATASETS / "q16_vit_l14_prompts.npy")
    data = fetch._convert_q16(pickle.dumps(arr))
    assert hashlib.sha256(data).hexdigest() == fetch.SOURCES["q16_vit_l14_prompts.npy"][1]
