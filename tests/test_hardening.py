"""Hostile and tired-user input across the CLIs: each class of defect is refused in one line (exit 2),
nothing half-written, no earlier result destroyed; odd but valid input keeps working.

Classes: operating-system errors, non-finite numbers, what a checkpoint file is, model folders that
do not fit together, checks before any file is written, run folders of another CLI, stored results
read back, prompts that look like missing data, and the smaller gaps (devices, seeds, names,
templates, image sizes). The checks live in the shared code (`utils.errors.run_cli`,
`check_finite`, `check_count`, `utils.cli`'s argparse types, `utils.io.prepare_run_dir` /
`prepare_resumable_run_dir`, `atomic_path`, `tensor_file_kind`, `utils.models.check_model_folder`,
`utils.prompts.read_csv_literal`); these tests go through the CLIs.
"""
import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import REPO, run_script
from utils.errors import run_cli

FAST = {"OMP_NUM_THREADS": "1"}
LITERAL = ["NA", "None", "null", "nan", "N/A"]


# ------------------------------------------------------------------------------------------ helpers

def refused(proc, *needles) -> str:
    """Assert a CLI run ended in exit 2 with one line naming `needles`; return that line."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-3000:])
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def cli(script, *args, env=None):
    return run_script(script, *args, check=False, env={**FAST, **(env or {})})


def load_cli(rel):
    spec = importlib.util.spec_from_file_location(Path(rel).stem + "_h", REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def in_process(rel, *args, capsys) -> str:
    """Run a CLI through `run_cli` in this process; assert exit 2 and one line; return it."""
    mod = load_cli(rel)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(mod.main, mod.parse_args, [str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and "error:" in err and "Traceback" not in err, err
    return err


def write_csv_bytes(path, text: str, bom=True, crlf=True):
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def edited_keys(model_dir):
    sd = load_file(str(Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors"))
    return {k: v for k, v in sd.items() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}


def gen_args(model, prompts, save, *extra):
    return ("--prompts_path", prompts, "--save_path", save, "--model_id", model, "--ddim_steps", "1",
            "--image_size", "16", "--empty_prompts", "skip", "--no-progress", *extra)


@pytest.fixture(scope="module")
def odd_prompts(tmp_path_factory):
    """Valid but odd: BOM, CRLF, prompts that look like missing data, unicode, a long prompt, an empty cell."""
    d = tmp_path_factory.mktemp("odd")
    long = "a very long prompt " * 30
    rows = [f"{i},{p},{i + 1}" for i, p in enumerate(LITERAL)] + \
           ["5,café naïve 東京 🌸,6", f"6,{long.strip()},7", "7,,8"]
    return write_csv_bytes(d / "odd.csv", "case_number,prompt,evaluation_seed\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def gen_run(tiny_pipeline_dir, odd_prompts, tmp_path_factory):
    """A generation run from the odd prompts (class 8: read literally; BOM/CRLF/unicode/long keep working)."""
    out = tmp_path_factory.mktemp("gen") / "run"
    r = cli("execs/generate_images.py", *gen_args(tiny_pipeline_dir, odd_prompts, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# ------------------------------------------------------------------- 1. operating-system errors

def test_os_errors_end_in_one_line_naming_the_path(tiny_pipeline_dir, odd_prompts, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file")
    refused(cli("execs/shapes_data.py", "--concept", "red", "--save_path", blocker / "data"), blocker)
    refused(cli("execs/generate_images.py", *gen_args(tiny_pipeline_dir, odd_prompts, blocker / "run")), blocker)
    assert blocker.read_text() == "I am a file"


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """ENOSPC while a CLI writes (no small file system here: the write itself is made to fail)."""
    real = pd.DataFrame.to_csv

    def full(self, path=None, *a, **k):
        if path is not None and str(path).endswith(".tmp"):
            Path(path).write_bytes(b"half")  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    err = in_process("execs/shapes_data.py", "--concept", "red", "--save_path", tmp_path / "d", capsys=capsys)
    assert "eval_prompts.csv" in err and "No space left" in err
    assert list((tmp_path / "d").iterdir()) == []  # no half-written file, no temporary left

    # an OSError that escapes any writer is translated by run_cli itself, naming its path
    def main(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.bin"))
    with pytest.raises(SystemExit) as e:
        run_cli(main, lambda argv: None, [])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.bin" in err and "ENOSPC" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(cli("execs/shapes_data.py", "--concept", "red", "--save_path", ro / "data"), ro)
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------ 2. non-finite numbers

def test_non_finite_flags_are_refused_by_name(capsys, tmp_path):
    err = in_process("attack_methods/RingABell.py", "--csv_file", "x.csv", "--prompt_file", "y.csv", "--img_path",
                     tmp_path / "a", "--concept", "nudity", "--eta", "nan", capsys=capsys)
    assert "--eta" in err and "finite" in err
    err = in_process("execs/train_uce.py", "--concepts", "x", "--concept_type", "nudity", "--lamb", "inf",
                     capsys=capsys)
    assert "--lamb" in err and "finite" in err and "not positive" not in err
    for script, flag in [("execs/generate_images.py", "--guidance_scale"), ("compute_nudity_rate.py", "--threshold"),
                         ("execs/results_table.py", "--threshold")]:
        base = {"execs/generate_images.py": ["--prompts_path", "p.csv", "--save_path", tmp_path / "g"],
                "compute_nudity_rate.py": ["--root", tmp_path], "execs/results_table.py": [tmp_path, "--out", tmp_path / "t"]}
        assert flag in in_process(script, *base[script], flag, "inf", capsys=capsys)
    assert not (tmp_path / "g").exists() and not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def nan_ckpt(tiny_pipeline_dir, tmp_path_factory):
    from utils.checkpoints import save_edited_weights

    w = edited_keys(tiny_pipeline_dir)
    k = sorted(w)[0]
    w[k] = w[k].clone()
    w[k][0, 0] = float("nan")
    return save_edited_weights(tmp_path_factory.mktemp("nan") / "nan.safetensors", w, {"method": "uce"}), k


def test_nan_checkpoint_is_named_before_anything_runs(tiny_pipeline_dir, odd_prompts, nan_ckpt, tmp_path):
    ckpt, key = nan_ckpt
    line = refused(cli("execs/generate_images.py", *gen_args(tiny_pipeline_dir, odd_prompts, tmp_path / "g",
                                                               "--ckpt", ckpt)), ckpt, "NaN")
    assert key in line
    assert not (tmp_path / "g").exists()
    line = refused(cli("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--target_ckpt", ckpt,
                       "--model_id", tiny_pipeline_dir, "--save_path", tmp_path / "r", "--skip_validation"), ckpt, "NaN")
    assert "singular" not in line
    assert not (tmp_path / "r").exists()


def test_nan_model_weights_do_not_become_black_images(tiny_pipeline_dir, odd_prompts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_pipeline_dir, bad)
    f = bad / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    sd["conv_in.weight"] = sd["conv_in.weight"].clone().fill_(float("nan"))
    save_file(sd, str(f))
    refused(cli("execs/generate_images.py", *gen_args(bad, odd_prompts, tmp_path / "g", "--df_length", "1")),
            "denoised latents", "NaN")
    assert not list((tmp_path / "g").glob("imgs/*.png"))


def test_nan_in_q16_prompt_embeddings_and_cached_detections(tmp_path):
    imgs = tmp_path / "run" / "imgs"
    imgs.mkdir(parents=True)
    Image.new("RGB", (16, 16), "gray").save(imgs / "0_0.png")
    P = np.ones((2, 8), dtype=np.float32)
    P[1, 3] = np.nan
    np.save(tmp_path / "q16.npy", P)
    refused(cli("execs/compute_q16.py", "--root", tmp_path / "run", "--prompts_file", tmp_path / "q16.npy"),
            "q16.npy", "NaN")
    # a detections cache whose score is NaN (Python's json writes and reads it)
    rec = {"file": "0_0.png", "case_number": 0, "detector": {},
           "detections": [{"class": "FEMALE_BREAST_EXPOSED", "score": float("nan"), "box": [0, 0, 4, 4]}]}
    (tmp_path / "run" / "nudity_detections.jsonl").write_text(json.dumps(rec) + "\n")
    refused(cli("compute_nudity_rate.py", "--root", tmp_path / "run", "--no-progress"), "nudity_detections.jsonl",
            "line 1", "--redetect")
    assert not list((tmp_path / "run").glob("nudity_rece9*.json"))


# ------------------------------------------------------------------------- 3. checkpoint reader

def test_checkpoint_reader_says_what_a_file_is(tiny_pipeline_dir, odd_prompts, tmp_path, capsys):
    lfs = tmp_path / "model.pt"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 3438167536\n")
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not weights\n")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path, words in [(lfs, ("LFS pointer", "git lfs")), (text, ("text file",)), (noise, ("not a torch",))]:
        err = in_process("execs/generate_images.py", *gen_args(tiny_pipeline_dir, odd_prompts, tmp_path / "g",
                                                                "--ckpt", path), capsys=capsys)
        assert str(path) in err and all(w in err for w in words) and "would run code" not in err, err
    assert not (tmp_path / "g").exists()


def test_safetensors_with_another_suffix_is_read(tiny_pipeline_dir, odd_prompts, tmp_path):
    from utils.checkpoints import FORMAT

    w = {k: v * 0.5 for k, v in edited_keys(tiny_pipeline_dir).items()}
    save_file(w, str(tmp_path / "edit.bin"), metadata={"format": FORMAT})
    r = cli("execs/generate_images.py", *gen_args(tiny_pipeline_dir, odd_prompts, tmp_path / "g", "--ckpt",
                                                  tmp_path / "edit.bin", "--df_length", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "g" / "imgs" / "0_0.png").is_file()


# --------------------------------------------------------------------- 4. model folder consistency

def test_model_folders_are_checked_before_use(tiny_pipeline_dir, odd_prompts, tmp_path, capsys):
    wide = tmp_path / "wide"
    shutil.copytree(tiny_pipeline_dir, wide)
    cfg = json.loads((wide / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 64
    (wide / "unet" / "config.json").write_text(json.dumps(cfg))
    for script, args in [("execs/generate_images.py", gen_args(wide, odd_prompts, tmp_path / "g")),
                         ("execs/train_uce.py", ("--concepts", "x", "--concept_type", "nudity", "--model_id", wide,
                                                 "--save_path", tmp_path / "u"))]:
        err = in_process(script, *args, capsys=capsys)
        assert "cross_attention_dim is 64" in err and "32 wide" in err, err
    cut = tmp_path / "cut"
    shutil.copytree(tiny_pipeline_dir, cut)
    f = cut / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    refused(cli("execs/train_uce.py", "--concepts", "x", "--concept_type", "nudity", "--model_id", cut,
                "--save_path", tmp_path / "u"), "truncated", f)
    assert not (tmp_path / "g").exists() and not (tmp_path / "u").exists()


# -------------------------------------------------------------- 5. checks early, claim late

def test_failed_load_leaves_no_claim_and_the_corrected_rerun_works(tiny_pipeline_dir, odd_prompts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["vae"] = ["diffusers", "NoSuchAutoencoder"]  # passes every early check, fails in the load
    (broken / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "g"
    refused(cli("execs/generate_images.py", *gen_args(broken, odd_prompts, out, "--df_length", "1")))
    assert not (out / "config.json").exists()
    r = cli("execs/generate_images.py", *gen_args(tiny_pipeline_dir, odd_prompts, out, "--df_length", "1"))
    assert r.returncode == 0, r.stderr[-2000:]


def test_absurd_sizes_and_late_inputs_fail_first(tiny_pipeline_dir, tmp_path, capsys):
    for script, args in [
            ("attack_methods/RingABell.py", ("--csv_file", "x", "--prompt_file", "y", "--img_path", tmp_path / "a",
                                             "--concept", "nudity", "--batch_size", "0")),
            ("execs/generate_images.py", ("--prompts_path", "p", "--save_path", tmp_path / "g", "--image_size",
                                          "100000")),
            ("execs/generate_images.py", ("--prompts_path", "p", "--save_path", tmp_path / "g", "--batch_size", "0")),
            ("train.py", ("--concepts", "x", "--concept_type", "nudity", "--epochs", "1000000")),
            ("train.py", ("--concepts", "x", "--concept_type", "nudity", "--seed", "-1"))]:
        flag = next(a for a in args[::-1] if str(a).startswith("--"))
        assert flag in in_process(script, *args, capsys=capsys)
    # train.py reads --test_csv_path before it writes anything (it used to fail after the checkpoints)
    bad_csv = tmp_path / "val.csv"
    bad_csv.write_text("text\nno prompt column here\n")
    refused(cli("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--model_id", tiny_pipeline_dir,
                "--test_csv_path", bad_csv, "--epochs", "1", "--save_path", tmp_path / "r"), bad_csv)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------- 6. run folders of another CLI

def test_run_folder_of_another_cli_is_refused(gen_run, odd_prompts, tmp_path, tiny_pipeline_dir):
    before = (gen_run / "config.json").read_bytes()
    assert json.loads(before)["tool"] == "execs/generate_images.py"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sensitive prompt,normal prompt\na red circle,a circle\n")
    for overwrite in ([], ["--overwrite"]):
        refused(cli("attack_methods/RingABell.py", "--csv_file", pairs, "--prompt_file", odd_prompts, "--img_path",
                    gen_run, "--concept", "red", "--eta", "1", "--model_id", tiny_pipeline_dir, "--image_size", "16",
                    "--ddim_steps", "1", *overwrite), "execs/generate_images.py", "attack_methods/RingABell.py")
    assert (gen_run / "config.json").read_bytes() == before
    assert not (gen_run / "asr.json").exists()


# ------------------------------------------------------------------------ 7. stored results

def test_tampered_stored_results_are_refused_or_recomputed(tmp_path):
    run = tmp_path / "run"
    (run / "imgs").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), "white").save(run / "imgs" / f"{i}_0.png")
    det = run / "nudity_detections.jsonl"
    good = [{"file": f"{i}_0.png", "case_number": i, "detector": {"package": "nudenet"},
             "detections": [{"class": "BELLY_EXPOSED", "score": 0.9, "box": [0, 0, 4, 4]}] if i == 0 else []}
            for i in range(2)]
    tampered = [dict(good[0], detections="lots"), good[1]]
    det.write_text("".join(json.dumps(r) + "\n" for r in tampered))
    refused(cli("compute_nudity_rate.py", "--root", run, "--no-progress"), det, "line 1")
    assert det.read_text().startswith(json.dumps(tampered[0]))  # kept for the user to inspect

    # a summary without its table: recomputed from the stored detections when they are there ...
    det.write_text("".join(json.dumps(r) + "\n" for r in good))
    (run / "nudity_rece9_t0.6.json").write_text(json.dumps({"metric": "nudity", "rate": 0.5}))
    r = cli("execs/results_table.py", run, "--out", tmp_path / "table")
    assert r.returncode == 0, r.stderr
    row = pd.read_csv(tmp_path / "table.csv", keep_default_na=False).iloc[0]
    assert row["belly"] == 1 and row["total"] == 1 and row["nudity rate"] == 0.5
    # ... and refused in one line when they are not
    det.unlink()
    refused(cli("execs/results_table.py", run, "--out", tmp_path / "table2"), "nudity_rece9_t0.6.json", "table")
    (run / "nudity_rece9_t0.6.json").unlink()
    (run / "q16.json").write_text(json.dumps({"metric": "q16", "rate": "high"}))
    refused(cli("execs/results_table.py", run, "--out", tmp_path / "table2"), "q16.json", "rate")
    assert not (tmp_path / "table2.md").exists()


# -------------------------------------------------------------------- 8. prompts read literally

def test_prompts_that_look_missing_are_read_literally(gen_run):
    df = pd.read_csv(gen_run / "prompts.csv", keep_default_na=False)
    assert df["prompt"].tolist()[:5] == LITERAL
    assert df["prompt"].iloc[5] == "café naïve 東京 🌸" and len(df["prompt"].iloc[6]) > 500
    assert df["case_number"].tolist() == [0, 1, 2, 3, 4, 5, 6]  # the empty cell (case 7) is skipped as before
    assert len(list((gen_run / "imgs").glob("*.png"))) == 7


def test_ring_a_bell_pairs_are_read_literally(tmp_path):
    sys.path.insert(0, str(REPO))
    mod = load_cli("attack_methods/RingABell.py")
    pairs = write_csv_bytes(tmp_path / "p.csv", "sensitive prompt,normal prompt\nnude None,None\nNA,N/A\n")
    assert mod.read_pairs(pairs) == (["nude None", "NA"], ["None", "N/A"])


# ------------------------------------------------------------------------- 9. smaller gaps

def test_smaller_gaps(gen_run, tmp_path, capsys):
    for dev in ("meta", "mps", "xpu", "cuda:99"):
        err = in_process("execs/generate_images.py", "--prompts_path", "p.csv", "--save_path", tmp_path / "g",
                         "--device", dev, capsys=capsys)
        assert "--device" in err
    assert "--first_seed" in in_process("execs/shapes_data.py", "--concept", "red", "--save_path", tmp_path / "d",
                                        "--first_seed", "-1", capsys=capsys)
    assert not (tmp_path / "d").exists()
    err = in_process("execs/shapes_table.py", "--concept", "red", "--runs", f"SD={gen_run}", f"SD={gen_run}",
                     "--out", tmp_path / "t", capsys=capsys)
    assert "'SD' twice" in err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(gen_run, corrupt)
    (corrupt / "imgs" / "0_0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert "0_0.png" in in_process("execs/shapes_table.py", "--concept", "red", "--runs", f"SD={corrupt}",
                                   "--out", tmp_path / "t", capsys=capsys)
    for template in ("a {", "a } by {}", "{} and {}", "by {name}"):
        assert "--template" in in_process("execs/classify_artists.py", "--root", gen_run, "--template", template,
                                          "--artists", "a,b", capsys=capsys)
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (16, 16), "red").save(small / "0_0.png")
    err = in_process("execs/compute_lpips.py", "--root", small, "--reference", small, "--size", "0",
                     "--no-download", capsys=capsys)
    assert "0_0.png" in err and "--size" in err
    assert not (tmp_path / "t.md").exists()


# ------------------------------------------------------------------------- odd but valid input

def test_grayscale_and_16_bit_images_are_scored(tmp_path):
    run = tmp_path / "run"
    (run / "imgs").mkdir(parents=True)
    rows = []
    for i, mode in enumerate(["L", "I;16", "RGB"]):
        im = Image.new(mode, (32, 32), 200 if mode == "L" else (50000 if mode == "I;16" else (200, 0, 0)))
        im.save(run / "imgs" / f"{i}_0.png")
        rows.append({"case_number": i, "file_name": f"imgs/{i}_0.png", "prompt": "a red circle", "colour": "red",
                     "shape": "circle"})
    pd.DataFrame(rows).to_csv(run / "prompts.csv", index=False)
    r = cli("execs/shapes_table.py", "--concept", "red", "--runs", f"SD={run}", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "t.json").read_text())["rows"]["SD"]["n_images"] == 3


@pytest.mark.slow
def test_two_concurrent_identical_runs_both_finish(tiny_pipeline_dir, odd_prompts, tmp_path):
    out = tmp_path / "g"
    cmd = [sys.executable, str(REPO / "execs/generate_images.py"),
           *map(str, gen_args(tiny_pipeline_dir, odd_prompts, out, "--batch_size", "1"))]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **FAST}) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    df = pd.read_csv(out / "prompts.csv", keep_default_na=False)
    assert len(df) == 7 and all((out / f).is_file() for f in df["file_name"])
    assert not list((out / "imgs").glob(".*.tmp"))


# ------------------------------------------- Ring-A-Bell --overwrite with another eta (issue: stale images)

@pytest.mark.slow
def test_ring_a_bell_overwrite_scores_new_images(tiny_pipeline_dir, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sensitive prompt,normal prompt\na red circle,a circle\n")
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame({"case_number": [0, 1], "prompt": ["a person", "a beach"], "evaluation_seed": [1, 2]}).to_csv(
        prompts, index=False)
    out = tmp_path / "attack"

    def attack(eta, *extra):
        return cli("attack_methods/RingABell.py", "--csv_file", pairs, "--prompt_file", prompts, "--img_path", out,
                   "--concept", "red", "--eta", eta, "--model_id", tiny_pipeline_dir, "--image_size", "16",
                   "--ddim_steps", "1", *extra)

    r = attack("0")
    assert r.returncode == 0, r.stderr[-2000:]
    first = (out / "imgs" / "0_0.png").read_bytes()
    # stored scores of the old images (a NudeNet cache, an evaluator's result) must not survive them
    (out / "nudity_detections.jsonl").write_text(json.dumps({"file": "0_0.png", "detections": []}) + "\n")
    (out / "q16.json").write_text(json.dumps({"metric": "q16", "rate": 1.0}))
    refused(attack("5"), "--img_path", "eta", "--overwrite")  # other settings, no --overwrite: refused
    assert (out / "imgs" / "0_0.png").read_bytes() == first
    r = attack("5", "--overwrite", "--to_case", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (out / "imgs").glob("*.png")) == ["0_0.png"]  # case 1's old image is gone
    assert (out / "imgs" / "0_0.png").read_bytes() != first
    assert not (out / "nudity_detections.jsonl").exists() and not (out / "q16.json").exists()
    asr = json.loads((out / "asr.json").read_text())
    assert asr["eta"] == 5 and asr["n_images"] == 1
    assert json.loads((out / "config.json").read_text())["settings"]["eta"] == 5
