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
SHARED = REPO.parent / "shared" / "datasets"


def load_fetch():
    spec = importlib.util.spec_from_file_location("fetch", REPO / "dataset" / "fetch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (SHARED / "nudity.csv").exists(), reason="no development copy of the datasets")
def test_fetch_checks_sha256_and_skips_present(tmp_path, monkeypatch):
    fetch = load_fetch()
    url = (SHARED / "nudity.csv").as_uri()
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


@pytest.mark.skipif(not (SHARED / "q16_vit_l14_prompts.npy").exists(), reason="no development copy")
def test_q16_npy_of_the_shared_copy_has_the_listed_checksum():
    fetch = load_fetch()
    arr = np.load(SHARED / "q16_vit_l14_prompts.npy")
    data = fetch._convert_q16(pickle.dumps(arr))
    assert hashlib.sha256(data).hexdigest() == fetch.SOURCES["q16_vit_l14_prompts.npy"][1]
