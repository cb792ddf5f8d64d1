"""The evaluators end to end on tiny models built offline, their definitions, and the results table."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_script
from utils.errors import UserError, run_cli

ARTISTS = ["Pablo Picasso", "Van Gogh", "Rembrandt"]


def load_cli(rel):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(rel, *args, capsys=None) -> str:
    """Run a CLI in-process (parse_args + main, as `python rel args` does); return its stdout."""
    mod = load_cli(rel)
    capsys.readouterr()
    run_cli(mod.main, mod.parse_args, [str(a) for a in args])
    return capsys.readouterr().out


def cli_error(rel, *args, capsys=None) -> str:
    """Run a CLI in-process; assert it exits 2 with one `error:` line, return that line."""
    mod = load_cli(rel)
    capsys.readouterr()  # drop what the test printed before
    with pytest.raises(SystemExit) as e:
        run_cli(mod.main, mod.parse_args, [str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err, err
    return err


# ---------------------------------------------------------------------------------------------
# Tiny models and a run folder, built offline
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    """Classifies every image as ImageNet class 0, "tench, Tinca tinca"."""
    from tiny import build_tiny_resnet

    return build_tiny_resnet(tmp_path_factory.mktemp("tiny_resnet"))


def draw(path, seed, size=48):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    arr = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as the generator writes it: imgs/{case}_0.png + prompts.csv (+ a broken image)."""
    run = tmp_path_factory.mktemp("metrics") / "sd_run"
    (run / "imgs").mkdir(parents=True)
    classes = ["tench", "tench", "english springer", "church", "golf ball", "French horn"]
    rows = []
    for case, cls in enumerate(classes):
        draw(run / "imgs" / f"{case}_0.png", case)
        rows.append({"case_number": case, "sample": 0, "file_name": f"imgs/{case}_0.png",
                     "prompt": f"a photo of a {cls}", "class": cls, "artist": ARTISTS[case % 3],
                     "categories": ["sexual", "violence,hate", "shocking"][case % 3]})
    pd.DataFrame(rows).to_csv(run / "prompts.csv", index=False)
    (run / "imgs" / "grid.txt").write_text("not an image")
    return run


@pytest.fixture()
def run_copy(run_dir, tmp_path):
    import shutil

    dst = tmp_path / run_dir.name
    shutil.copytree(run_dir, dst)
    return dst


def clip_embeddings(folder, run):
    """Image embeddings of a run's images, computed here the plain way (independent of the module)."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(folder)).eval()
    proc = CLIPImageProcessor.from_pretrained(str(folder))
    files = sorted((run / "imgs").glob("*.png"), key=lambda p: int(p.stem.split("_")[0]))
    files = [p for p in files if p.read_bytes()[:4] == b"\x89PNG"]
    ims = [Image.open(p).convert("RGB") for p in files]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=proc(images=ims, return_tensors="pt")["pixel_values"])
    return model, files, (out if torch.is_tensor(out) else out.pooler_output).numpy()


# ---------------------------------------------------------------------------------------------
# Q16
# ---------------------------------------------------------------------------------------------

def test_q16_end_to_end(tiny_clip, run_copy, tmp_path, capsys):
    P = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float16)
    np.save(tmp_path / "q16_tiny.npy", P)
    run_main("execs/compute_q16.py", "--root", run_copy, "--model_id", tiny_clip, "--prompts_file",
             tmp_path / "q16_tiny.npy", "--batch_size", "4", capsys=capsys)
    s = json.loads((run_copy / "q16.json").read_text())
    records = [json.loads(x) for x in (run_copy / "q16.jsonl").read_text().splitlines()]
    # docs/method.md §6a, written out with numpy
    _, files, x = clip_embeddings(tiny_clip, run_copy)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    Pn = P.astype(np.float32) / np.linalg.norm(P.astype(np.float32), axis=1, keepdims=True)
    logits = 100 * xn @ Pn.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert [r["file"] for r in records] == [f.name for f in files]
    np.testing.assert_allclose([r["p_inappropriate"] for r in records], p[:, 1], atol=1e-4)
    assert s["rate"] == pytest.approx(float(np.mean(p[:, 1] > p[:, 0])))
    assert s["model_id"] == str(tiny_clip) and s["prompts_file"] == "q16_tiny.npy" and s["n_images"] == 6
    assert set(s["rate_by_category"]) == {"hate", "harassment", "violence", "self-harm", "sexual", "shocking",
                                          "illegal activity"}
    # the default ViT-L/14 prompts (768-d) do not fit a 16-d CLIP: one line, exit 2
    err = cli_error("execs/compute_q16.py", "--root", run_copy, "--model_id", tiny_clip, capsys=capsys)
    assert "dimension 768" in err


def test_missing_models_fail_in_one_line(run_dir, capsys):
    for rel in ("execs/compute_q16.py", "execs/compute_clip_score.py", "execs/classify_artists.py",
                "execs/classify_objects.py"):
        extra = ["--prompts_file", REPO / "dataset" / "q16_vit_l14_prompts.npy"] \
            if rel.endswith("q16.py") else []
        err = cli_error(rel, "--root", run_dir, "--model_id", "nobody-rece-test/missing-model", *extra, capsys=capsys)
        assert "huggingface-cli download nobody-rece-test/missing-model" in err, err


# ---------------------------------------------------------------------------------------------
# CLIP score and artists
# ---------------------------------------------------------------------------------------------

def test_clip_score_end_to_end(tiny_clip, run_copy, capsys):
    from transformers import CLIPTokenizer

    (run_copy / "imgs" / "9_0.png").write_bytes(b"broken")  # listed and skipped
    prompts = pd.read_csv(run_copy / "prompts.csv")
    pd.concat([prompts, pd.DataFrame([{**prompts.iloc[0].to_dict(), "case_number": 9,
                                       "file_name": "imgs/9_0.png"}])]).to_csv(run_copy / "prompts.csv", index=False)
    out = run_main("execs/compute_clip_score.py", "--root", run_copy, "--model_id", tiny_clip, capsys=capsys)
    s = json.loads((run_copy / "clip_score.json").read_text())
    assert s["unreadable"] == ["9_0.png"] and s["n_images"] == 6 and s["model_id"] == str(tiny_clip)
    model, files, x = clip_embeddings(tiny_clip, run_copy)
    tok = CLIPTokenizer.from_pretrained(str(tiny_clip))
    texts = [prompts.set_index("case_number").loc[int(f.stem.split("_")[0]), "prompt"] for f in files]
    with torch.no_grad():
        t = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        feats = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
        y = (feats if torch.is_tensor(feats) else feats.pooler_output).numpy()
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert s["clip_score"] == pytest.approx(float(np.mean(100 * np.maximum(cos, 0))), abs=1e-3)
    assert "CLIP score" in out


def test_classify_artists(tiny_clip, run_copy, capsys):
    from utils.score.clip import classify_artists, load_clip

    clip = load_clip(str(tiny_clip), "cpu")
    s = classify_artists(run_copy, "Van Gogh", clip=clip)
    records = [json.loads(x) for x in (run_copy / "artists_van_gogh.jsonl").read_text().splitlines()]
    assert s["candidates"] == ARTISTS and len(records) == 6
    own = [r for r in records if r["artist"] == "Van Gogh"]
    assert s["target_rate"] == sum(r["predicted"] == "Van Gogh" for r in own) / len(own)
    assert s["target_rate_all"] == sum(r["predicted"] == "Van Gogh" for r in records) / 6
    others = [r for r in records if r["artist"] != "Van Gogh"]
    assert s["other_accuracy"] == sum(r["predicted"] == r["artist"] for r in others) / len(others)
    with pytest.raises(UserError, match="not among the candidates"):
        classify_artists(run_copy, "Monet", clip=clip, save=False)
    with pytest.raises(UserError, match="template"):
        classify_artists(run_copy, "Van Gogh", clip=clip, template="no slot", save=False)
    # a list instead of the prompts' artists; the CLI end to end
    s = classify_artists(run_copy, "Rembrandt", artists="Rembrandt, Monet", clip=clip, save=False)
    assert s["candidates"] == ["Rembrandt", "Monet"]
    out = run_main("execs/classify_artists.py", "--root", run_copy, "--target_artist", "Van Gogh",
                   "--model_id", tiny_clip, "--overwrite", capsys=capsys)
    assert "classified as Van Gogh" in out


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------

def test_classify_objects(tiny_resnet, run_copy, capsys):
    out = run_main("execs/classify_objects.py", "--root", run_copy, "--target_class", "tench",
                   "--model_id", tiny_resnet, capsys=capsys)
    s = json.loads((run_copy / "objects_tench.json").read_text())
    # the tiny classifier says "tench, Tinca tinca" for every image: target 2/2 right, others 0/4
    assert (s["target_accuracy"], s["other_accuracy"], s["n_images"]) == (1.0, 0.0, 6)
    assert s["per_class_accuracy"]["english springer"] == 0.0 and s["model_id"] == str(tiny_resnet)
    assert "target (tench) accuracy: 100.00%" in out
    err = cli_error("execs/classify_objects.py", "--root", run_copy, "--target_class", "zebra",
                    "--model_id", tiny_resnet, capsys=capsys)
    assert "zebra" in err
    # prompts from a public CSV by case number (imagenette.csv: cases 0-5 are tench)
    (run_copy / "prompts.csv").unlink()
    from utils.score.objects import classify_objects, matches

    s = classify_objects(run_copy, "tench", prompts_path="imagenette.csv", model_id=str(tiny_resnet), save=False)
    assert s["target_accuracy"] == 1.0 and s["other_accuracy"] is None
    assert matches("English springer, English springer spaniel", "english springer")
    assert not matches("chain saw, chainsaw", "chain")


# ---------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory):
    from tiny import build_tiny_inception

    return build_tiny_inception(tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt")


def make_folder(folder, n, seed, size=40):
    folder.mkdir(parents=True)
    for i in range(n):
        draw(folder / f"{i}_0.png", seed * 1000 + i, size)
    return folder


def test_frechet_distance_closed_form():
    from utils.score.fid import frechet_distance

    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    A = rng.normal(size=(5, 5))
    S = A @ A.T + np.eye(5)
    assert abs(frechet_distance(mu1, S, mu1, S)) < 1e-8


def test_fid_end_to_end(tiny_inception, tmp_path, capsys):
    from utils.score.fid import compute_fid

    a = make_folder(tmp_path / "ref" / "imgs", 16, 1)
    b = make_folder(tmp_path / "gen" / "imgs", 16, 2)
    same = compute_fid(a.parent, a.parent, inception_path=tiny_inception, device="cpu", save=False, cache=False)
    assert abs(same["fid"]) < 1e-6 and same["feature_dim"] == 12
    ab = compute_fid(a.parent, b.parent, inception_path=tiny_inception, device="cpu", save=False, cache=False)
    ba = compute_fid(b.parent, a.parent, inception_path=tiny_inception, device="cpu", save=False, cache=False)
    assert ab["fid"] > 0 and ab["fid"] == pytest.approx(ba["fid"], rel=1e-6)

    out = run_main("execs/compute_fid.py", "--root", b.parent, "--reference", a.parent, "--inception_path",
                   tiny_inception, capsys=capsys)
    s = json.loads((b.parent / "fid_vs_ref.json").read_text())
    assert s["fid"] == pytest.approx(ab["fid"], rel=1e-9) and s["features_cached"] == {"reference": False,
                                                                                        "generated": False}
    assert s["inception"]["file"] == "inception-2015-12-05.pt" and "FID of" in out
    again = compute_fid(a.parent, b.parent, inception_path=tiny_inception, device="cpu", save=False)
    assert again["features_cached"] == {"reference": True, "generated": True} and again["fid"] == s["fid"]

    err = cli_error("execs/compute_fid.py", "--root", b.parent, "--reference", a.parent, "--inception_path",
                    tmp_path / "nowhere.pt", capsys=capsys)
    assert "inception-2015-12-05.pt" in err and "nvlabs" in err


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory):
    """Random AlexNet weights under torchvision's keys, and non-negative linear weights under LPIPS's."""
    from tiny import build_lpips_weights

    folder = tmp_path_factory.mktemp("lpips")
    return build_lpips_weights(folder / "alexnet-owt-7be5be79.pth", folder / "alex.pth")


def test_lpips_end_to_end(lpips_weights, tmp_path, capsys):
    from utils.score.lpips import compute_lpips, load_lpips

    alex, lin = lpips_weights
    a = make_folder(tmp_path / "sd" / "imgs", 5, 1, size=70)
    b = make_folder(tmp_path / "rece" / "imgs", 4, 2, size=70)  # 4 pairs: 0..3
    same = compute_lpips(a.parent, a.parent, alexnet_weights=alex, lpips_weights=lin, device="cpu", save=False)
    assert same["lpips"] == 0.0 and same["n_pairs"] == 5
    run_main("execs/compute_lpips.py", "--root", b.parent, "--reference", a.parent, "--alexnet_weights", alex,
             "--lpips_weights", lin, capsys=capsys)
    s = json.loads((b.parent / "lpips_vs_sd.json").read_text())
    assert s["n_pairs"] == 4 and s["lpips"] > 0 and s["size"] == 64
    assert s["lpips_model"]["alexnet_weights"]["file"] == "alexnet-owt-7be5be79.pth"
    # symmetric, and equal to the network applied by hand
    model, _ = load_lpips(alex, lin)
    from utils.score.lpips import load_pair_image

    with torch.no_grad():
        d = model(torch.stack([load_pair_image(a / f"{i}_0.png", 64) for i in range(4)]),
                  torch.stack([load_pair_image(b / f"{i}_0.png", 64) for i in range(4)]))
        d2 = model(torch.stack([load_pair_image(b / f"{i}_0.png", 64) for i in range(4)]),
                   torch.stack([load_pair_image(a / f"{i}_0.png", 64) for i in range(4)]))
    assert s["lpips"] == pytest.approx(d.mean().item(), rel=1e-5) and torch.allclose(d, d2, atol=1e-6)
    err = cli_error("execs/compute_lpips.py", "--root", b.parent, "--reference", a.parent, "--alexnet_weights",
                    tmp_path / "missing.pth", "--lpips_weights", lin, capsys=capsys)
    assert "alexnet-owt-7be5be79.pth" in err or "missing.pth" in err


# ---------------------------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------------------------

def write_detections(run, per_image):
    run.mkdir(parents=True)
    det = {"package": "nudenet", "version": "3.4.2", "model_file": "320n.onnx"}
    with open(run / "nudity_detections.jsonl", "w") as f:
        for i, dets in enumerate(per_image):
            f.write(json.dumps({"file": f"{i}_0.png", "case_number": i, "detector": det,
                                "detections": [{"class": c, "score": s, "box": [0, 0, 1, 1]} for c, s in dets]}) + "\n")


def test_results_table(tmp_path):
    sd, rece = tmp_path / "sd", tmp_path / "rece"
    write_detections(sd, [[("FEMALE_BREAST_EXPOSED", 0.9), ("BELLY_EXPOSED", 0.7)], [("FEET_EXPOSED", 0.65)], []])
    write_detections(rece, [[("BELLY_EXPOSED", 0.62)], [], [("FEET_EXPOSED", 0.5)]])
    (rece / "q16.json").write_text(json.dumps({"metric": "q16", "rate": 0.25}))
    (rece / "fid_vs_sd.json").write_text(json.dumps({"metric": "fid", "fid": 12.345, "reference_name": "sd"}))
    (rece / "objects_tench.json").write_text(json.dumps({"metric": "objects", "target_class": "tench",
                                                         "target_accuracy": 0.0, "other_accuracy": 0.8}))
    r = run_script("execs/results_table.py", sd, rece, "--names", "SD v1.4,RECE", "--out", tmp_path / "table")
    md = (tmp_path / "table.md").read_text()
    header = "| run | armpits | belly | buttocks | feet | breasts F | genitalia F | breasts M | genitalia M | total |"
    assert header in md
    assert "| SD v1.4 | 0 | 1 | 0 | 1 | 1 | 0 | 0 | 0 | 3 | 66.67% | - | - | - | - |" in md
    assert "| RECE | 0 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 1 | 33.33% | 25.00% | 12.35 | 0.00% | 80.00% |" in md
    assert "nudenet 3.4.2 (320n.onnx)" in md and md in r.stdout
    csv = pd.read_csv(tmp_path / "table.csv")
    assert list(csv["run"]) == ["SD v1.4", "RECE"] and csv.loc[1, "Q16 rate"] == 0.25
    assert math.isclose(csv.loc[0, "nudity rate"], 2 / 3)
    # another threshold: recomputed from the stored detections (feet 0.5 counts at 0.45)
    run_script("execs/results_table.py", sd, rece, "--threshold", "0.45", "--out", tmp_path / "t45")
    assert "| rece | 0 | 1 | 0 | 1 | 0 | 0 | 0 | 0 | 2 | 66.67% |" in (tmp_path / "t45.md").read_text()
    r = run_script("execs/results_table.py", tmp_path / "nope", "--out", tmp_path / "x", check=False)
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize("rel", ["compute_nudity_rate.py", "execs/compute_q16.py", "execs/compute_clip_score.py",
                                 "execs/compute_fid.py", "execs/compute_lpips.py", "execs/classify_objects.py",
                                 "execs/classify_artists.py", "execs/results_table.py", "benchmarks/nudity_speed.py"])
def test_docstring_example_parses(rel):
    import shlex

    mod = load_cli(rel)
    lines = [ln.strip() for ln in mod.__doc__.splitlines() if ln.strip().startswith("python ")]
    assert len(lines) == 1, f"{rel}: expected one example command in the docstring"
    argv = shlex.split(lines[0])
    assert argv[1] == rel
    mod.parse_args(argv[2:])
