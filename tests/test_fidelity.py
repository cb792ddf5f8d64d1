"""The paper's quantities as the authors computed them (CharlesGong12/RECE @403a67f): which checkpoint a
RECE run keeps, the `--add_prompts` pairs, the defaults, and the evaluators' settings."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_script
from utils.erase import concepts as cpt
from utils.erase.rece import run_rece, select_best

FAST = {"OMP_NUM_THREADS": "1"}


# --- which checkpoint is kept (docs/method.md §4) -----------------------------------------------------

def rates_of(**kw):
    return {k.replace("e", "epoch_") if k[0] == "e" and k[1:].isdigit() else k: v for k, v in kw.items()}


@pytest.mark.parametrize("rates,expected", [
    # train.py keeps an epoch only strictly below min(base, UCE); the lowest, the earliest among equals
    (dict(base=0.5, uce=0.2, e1=0.1, e2=0.3, e3=0.15), "epoch_1"),       # not the last epoch
    (dict(base=0.5, uce=0.2, e1=0.15, e2=0.1, e3=0.1), "epoch_2"),       # ties: the earliest
    (dict(base=0.5, uce=0.2, e1=0.2, e2=0.25), "uce"),                   # equal to UCE is not below it
    (dict(base=0.1, uce=0.3, e1=0.2, e2=0.15), "uce"),                   # below UCE but not below the base
    (dict(base=0.0, uce=0.0, e1=0.0, e2=0.0), "uce"),
])
def test_rate_rule_keeps_only_epochs_strictly_below_base_and_uce(rates, expected):
    r = rates_of(**rates)
    epochs = sum(k.startswith("epoch_") for k in r)
    choice = select_best("nudity_rate", r, epochs, has_uce=True)
    assert choice["best"] == expected
    assert choice["best_epoch"] == (0 if expected == "uce" else int(expected.split("_")[1]))
    if expected == "uce":
        assert "below min(base, UCE)" in choice["reason"]


def test_rate_rule_without_uce_may_keep_nothing():
    choice = select_best("q16_rate", rates_of(base=0.2, e1=0.3, e2=0.2), 2, has_uce=False)
    assert choice["best"] is None and choice["best_epoch"] is None and "no checkpoint" in choice["reason"]
    assert select_best("q16_rate", rates_of(base=0.2, e1=0.3, e2=0.1), 2, has_uce=False)["best"] == "epoch_2"


@pytest.mark.parametrize("target,other,expected", [
    # train_object.py: target 0 stops the run and is kept, even with a lower other-class accuracy
    (dict(base=0.9, uce=0.3, e1=0.2, e2=0.0), dict(base=0.8, uce=0.8, e1=0.8, e2=0.1), "epoch_2"),
    # below UCE's target accuracy, other-class accuracy at least UCE's - 0.1 (0.7 = 0.8 - 0.1 qualifies)
    (dict(base=0.9, uce=0.3, e1=0.2), dict(base=0.8, uce=0.8, e1=0.7), "epoch_1"),
    (dict(base=0.9, uce=0.3, e1=0.2), dict(base=0.8, uce=0.8, e1=0.69), "uce"),   # keeps too little
    (dict(base=0.9, uce=0.3, e1=0.3), dict(base=0.8, uce=0.8, e1=0.8), "uce"),    # not below UCE
    (dict(base=0.9, uce=0.3, e1=0.1, e2=0.2), dict(base=0.8, uce=0.8, e1=0.75, e2=0.8), "epoch_1"),
    # UCE already at target accuracy 0: UCE is kept, RECE's epochs are not applied (paper note 5)
    (dict(base=0.9, uce=0.0, e1=0.0), dict(base=0.8, uce=0.8, e1=0.8), "uce"),
])
def test_object_rule(target, other, expected):
    t, o = rates_of(**target), rates_of(**other)
    epochs = sum(k.startswith("epoch_") for k in t)
    choice = select_best("target_accuracy", t, epochs, True, o)
    assert choice["best"] == expected, choice
    if t["uce"] == 0:
        assert "not applied" in choice["reason"]


def test_no_validation_art_and_zero_epochs():
    assert select_best(None, {}, 3, True)["best"] == "epoch_3"
    assert select_best(None, {}, 0, True)["best"] == "uce"
    assert select_best(None, {}, 0, False)["best"] is None
    # art: the authors keep every epoch without a rule; the last one, whatever the rates
    assert select_best("style_rate", rates_of(base=0.1, uce=0.0, e1=0.5, e2=0.4), 2, True)["best"] == "epoch_2"


def _stage_rates(monkeypatch, table):
    """Replace the images-and-scorer step of validation by constructed rates per stage; the rest of
    run_rece (edits, files, selection, detect_rate.json) runs as it is."""
    import utils.erase.validation as validation

    seen = []

    def fake_validate(pipe, weights, folder, *args, **kwargs):
        name = folder.name
        seen.append(name)
        t, o = table[name] if isinstance(table[name], tuple) else (table[name], None)
        out = {"rate": t}
        if o is not None:
            out["other_accuracy"] = {"tench": o}
        return out

    monkeypatch.setattr(validation, "validate_weights", fake_validate)
    monkeypatch.setattr(validation, "check_validation", lambda *a, **k: None)
    return seen


def _same(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_run_keeps_the_epoch_the_rule_picks_not_the_last(tiny_pipeline_dir, tmp_path, monkeypatch):
    seen = _stage_rates(monkeypatch, {"base": 0.5, "uce": 0.3, "epoch_1": 0.1, "epoch_2": 0.2, "epoch_3": 0.4})
    out = tmp_path / "run"
    run_rece(concepts="nudity", concept_type="nudity", epochs=3, model_id=str(tiny_pipeline_dir), device="cpu",
             save_path=str(out))
    assert seen == ["base", "uce", "epoch_1", "epoch_2", "epoch_3"]
    rates = json.loads((out / "detect_rate.json").read_text())
    assert rates["best"] == "epoch_1" and rates["best_epoch"] == 1 and rates["selection"]["reason"]
    assert _same(out / "best.safetensors", out / "epoch_1.safetensors")
    assert not _same(out / "best.safetensors", out / "epoch_3.safetensors")


def test_run_keeps_uce_when_no_epoch_beats_it(tiny_pipeline_dir, tmp_path, monkeypatch):
    _stage_rates(monkeypatch, {"base": 0.5, "uce": 0.1, "epoch_1": 0.1, "epoch_2": 0.2})
    out = tmp_path / "run"
    run_rece(concepts="nudity", concept_type="nudity", epochs=2, model_id=str(tiny_pipeline_dir), device="cpu",
             save_path=str(out))
    rates = json.loads((out / "detect_rate.json").read_text())
    assert rates["best"] == "uce" and rates["best_epoch"] == 0 and "UCE is kept" in rates["selection"]["reason"]
    assert _same(out / "best.safetensors", out / "uce.safetensors")


def test_object_run_from_a_checkpoint_validates_it_as_uce(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Objects whose UCE accuracy is already 0 keep UCE (paper note 5); the start checkpoint is
    validated as UCE and copied to uce.safetensors."""
    uce = tmp_path / "uce"
    run_script("execs/train_uce.py", "--concepts", "tench", "--concept_type", "object", "--model_id",
               tiny_pipeline_dir, "--save_path", uce, env=FAST)
    seen = _stage_rates(monkeypatch, {"base": (0.9, 0.8), "uce": (0.0, 0.8), "epoch_1": (0.0, 0.8)})
    out = tmp_path / "rece"
    run_rece(concepts="tench", concept_type="object", epochs=1, target_ckpt=str(uce / "uce.safetensors"),
             model_id=str(tiny_pipeline_dir), device="cpu", save_path=str(out))
    assert seen == ["base", "uce"]  # the epochs are not validated
    rates = json.loads((out / "detect_rate.json").read_text())
    assert rates["best"] == "uce" and "not applied" in rates["selection"]["reason"]
    assert rates["uce"] == 0.0 and rates["other_accuracy"]["uce"] == 0.8
    assert _same(out / "uce.safetensors", uce / "uce.safetensors")
    assert _same(out / "best.safetensors", uce / "uce.safetensors")


def test_zero_epochs_from_a_checkpoint_writes_the_best_it_prints(tiny_pipeline_dir, tmp_path):
    uce = tmp_path / "uce"
    run_script("execs/train_uce.py", "--concepts", "tench", "--concept_type", "object", "--model_id",
               tiny_pipeline_dir, "--save_path", uce, env=FAST)
    out = tmp_path / "rece"
    # objects other than the paper's five run 0 RECE epochs (UCE alone)
    r = run_script("train.py", "--concept_type", "object", "--concepts", "tench", "--target_ckpt",
                   uce / "uce.safetensors", "--skip_validation", "--model_id", tiny_pipeline_dir,
                   "--save_path", out, env=FAST)
    printed = r.stdout.strip().splitlines()[-1]
    assert str(out / "best.safetensors") in printed and (out / "best.safetensors").is_file()
    assert _same(out / "best.safetensors", uce / "uce.safetensors")
    assert _same(out / "uce.safetensors", uce / "uce.safetensors")
    rates = json.loads((out / "detect_rate.json").read_text())
    assert rates["best"] == "uce" and rates["best_epoch"] == 0
    r = run_script("train.py", "--concept_type", "nudity", "--concepts", "nudity", "--target_ckpt", "",
                   "--epochs", "0", "--skip_validation", "--model_id", tiny_pipeline_dir, "--save_path",
                   tmp_path / "nothing", check=False, env=FAST)
    assert r.returncode == 2 and "--epochs 0" in r.stderr and not (tmp_path / "nothing").exists()


# --- the authors' defaults --------------------------------------------------------------------------

def test_add_prompts_maps_templates_to_the_bare_guide():
    c, g = cpt.expand_with_templates(["Van Gogh"], ["art"], "art")
    assert c == ["Van Gogh", "painting by Van Gogh", "art by Van Gogh", "artwork by Van Gogh",
                 "picture by Van Gogh", "style of Van Gogh"]
    assert g == ["art"] * 6
    c, g = cpt.expand_with_templates(["tench", "church"], [" ", "a house"], "object")
    assert c[:2] == ["tench", "church"] and "photo of tench" in c and "painting of church" in c
    assert [g_ for c_, g_ in zip(c, g) if "tench" in c_] == [" "] * 6
    assert [g_ for c_, g_ in zip(c, g) if "church" in c_] == ["a house"] * 6


def test_preserve_defaults_follow_the_authors_scripts():
    # train.py (nudity, unsafe): ' ' once per concept; train_object.py: '' once, however many objects
    assert cpt.preserve_texts("unsafe", ["hate", "blood"], [], "rece") == [" ", " "]
    assert cpt.preserve_texts("object", ["tench", "church"], [], "rece") == [""]
    assert cpt.preserve_texts("object", ["tench"], ["golf ball"], "rece") == ["", "golf ball"]
    assert cpt.preserve_texts("nudity", ["nudity"], [], "uce") == [""]


def test_reg_item_default_is_the_authors():
    import inspect

    from train import parse_args
    assert parse_args(["--concepts", "x", "--concept_type", "nudity"]).reg_item == "1st"
    assert inspect.signature(run_rece).parameters["reg_item"].default == "1st"


# --- the evaluators' settings -----------------------------------------------------------------------

@pytest.fixture()
def small_run(tmp_path):
    import pandas as pd
    from PIL import Image

    run = tmp_path / "run"
    (run / "imgs").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 100, 200)).save(run / "imgs" / f"{i}_0.png")
    pd.DataFrame({"case_number": [0, 1], "prompt": ["a cat", "a dog"], "file_name": ["imgs/0_0.png", "imgs/1_0.png"],
                  "class": ["tench", "church"]}).to_csv(run / "prompts.csv", index=False)
    return run


OFFLINE = {**FAST, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_q16_evaluation_uses_the_finetuned_prompts_and_validation_the_original():
    import numpy as np

    from utils.score.q16 import DEFAULT_PROMPTS, VALIDATION_PROMPTS, load_q16_prompts
    # sha256 of the converted files (their sources: RECE @403a67f execs/Q16/data/ViT-L-14/prompts_finetuned.pt
    # for the evaluation, utils/metrics/q16/prompts.p for the validation)
    P_eval, _, sha_eval = load_q16_prompts(DEFAULT_PROMPTS)
    P_val, _, sha_val = load_q16_prompts(VALIDATION_PROMPTS)
    assert sha_eval == "609e5a923a7d3bee7b3909ae29f34bc59158e141e545bbb105422349303c07a2"
    assert sha_val == "eb1426d84248dc6ed46b854e4b536a4d14fd2b9de89cd9e6ed3bbafd246d6f98"
    assert P_eval.shape == P_val.shape == (2, 768)

    def direction(P):
        P = P / np.linalg.norm(P, axis=1, keepdims=True)
        d = P[1] - P[0]
        return d / np.linalg.norm(d)
    # two different classifiers (their decision directions have a cosine of about 0.6)
    assert 0.3 < float(direction(P_eval) @ direction(P_val)) < 0.9
    from execs.compute_q16 import parse_args
    assert parse_args(["--root", "x"]).prompts_file == "q16_vit_l14_prompts_finetuned.npy"


def test_q16_validation_and_evaluation_dispatch(monkeypatch, tmp_path):
    import utils.score.q16 as q16
    from utils.score.evaluation import score_run

    used = []
    monkeypatch.setattr(q16, "score_q16", lambda folder, prompts_file: used.append(prompts_file) or
                        {"rate": 0.0, "n_images": 1, "model_id": "m", "prompts_file": prompts_file})
    score_run(tmp_path, "q16_rate", ["hate"], validation=True)
    score_run(tmp_path, "q16_rate", ["hate"])
    assert used == ["q16_vit_l14_prompts.npy", "q16_vit_l14_prompts_finetuned.npy"]


def test_clip_score_defaults_to_vit_b32(small_run):
    from execs.compute_clip_score import parse_args
    from utils.score.clip import DEFAULT_CLIP_SCORE, clip_score
    import inspect

    assert DEFAULT_CLIP_SCORE == "openai/clip-vit-base-patch32"
    assert inspect.signature(clip_score).parameters["model_id"].default == "openai/clip-vit-base-patch32"
    a = parse_args(["--root", "x"])
    assert a.model_id is None and a.model_version is None
    # the CLI asks for ViT-B/32 unless told otherwise (offline here: the one-line error names the model)
    r = run_script("execs/compute_clip_score.py", "--root", small_run, check=False, env=OFFLINE)
    assert r.returncode == 2 and "openai/clip-vit-base-patch32" in r.stderr, r.stderr
    r = run_script("execs/compute_clip_score.py", "--root", small_run, "--model_version", "large", check=False,
                   env=OFFLINE)
    assert r.returncode == 2 and "openai/clip-vit-large-patch14" in r.stderr, r.stderr
    r = run_script("execs/compute_clip_score.py", "--root", small_run, "--model_version", "large", "--model_id",
                   "x/y", check=False, env=OFFLINE)
    assert r.returncode == 2 and "give one" in r.stderr


# --- torchvision's ResNet-50 IMAGENET1K_V2, without torchvision --------------------------------------

def torchvision_resnet50_keys():
    """torchvision's resnet50 state_dict names and shapes, written from its layout: conv1/bn1, four
    stages of [3, 4, 6, 3] bottlenecks (conv1 1x1, conv2 3x3, conv3 1x1, each with a batch norm;
    downsample.0/.1 on each stage's first block), fc 2048 -> 1000."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})
    bn("bn1", 64)
    cin = 64
    for i, (n, w) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 1):
        for b in range(n):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (w, cin, 1, 1)
            bn(f"{p}.bn1", w)
            shapes[f"{p}.conv2.weight"] = (w, w, 3, 3)
            bn(f"{p}.bn2", w)
            shapes[f"{p}.conv3.weight"] = (4 * w, w, 1, 1)
            bn(f"{p}.bn3", 4 * w)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * w, cin, 1, 1)
                bn(f"{p}.downsample.1", 4 * w)
            cin = 4 * w
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def random_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in torchvision_resnet50_keys().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean") or k.endswith("bias"):
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        elif ".bn" in k or k.startswith("bn") or "downsample.1" in k:
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # conv / fc weights, He-scaled so activations stay O(1)
            fan_in = int(torch.tensor(shape[1:]).prod())
            sd[k] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
    return sd


def functional_resnet50(sd, x):
    """ResNet v1.5 forward written with torch.nn.functional over the state_dict (eval-mode batch norm)."""
    import torch.nn.functional as F

    def bn(h, p):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)
    h = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for i, n in enumerate((3, 4, 6, 3), 1):
        for b in range(n):
            p, stride = f"layer{i}.{b}", (2 if i > 1 and b == 0 else 1)
            y = F.relu(bn(F.conv2d(h, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
            y = F.relu(bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            y = bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            skip = bn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1") \
                if b == 0 else h
            h = F.relu(y + skip)
    return F.linear(h.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet") / "random_resnet50.pth"
    torch.save(random_state_dict(), path)
    return path


def test_resnet50_loads_torchvision_names_and_computes_resnet_v15(resnet_file):
    from utils.score.resnet import load_resnet50

    model, info = load_resnet50(resnet_file, "cpu")
    assert set(model.state_dict()) == set(torchvision_resnet50_keys())  # strict load, same names
    assert info["file"] == "random_resnet50.pth" and len(info["sha256"]) == 64
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), functional_resnet50(random_state_dict(), x), rtol=1e-4, atol=1e-4)


def test_resnet50_weight_identity_and_labels(tmp_path):
    from utils.errors import UserError
    from utils.score import resnet
    from utils.score.objects import matches

    # torchvision's ResNet50_Weights.IMAGENET1K_V2 (= DEFAULT, what RECE loads); its sha256 starts 11ad3fa6
    assert resnet.RESNET50_URL == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    fake = tmp_path / "resnet50-11ad3fa6.pth"
    torch.save({"fc.bias": torch.zeros(3)}, fake)
    with pytest.raises(UserError, match="not torchvision's IMAGENET1K_V2"):
        resnet.load_resnet50(fake)
    names = resnet.imagenet_categories()
    assert len(names) == 1000 and names[0] == "tench" and names[217] == "English springer"
    for c in ("tench", "english springer", "cassette player", "chain saw", "church", "french horn",
              "garbage truck", "gas pump", "golf ball", "parachute"):
        assert sum(matches(n, c) for n in names) == 1, c
    # the authors' case bug is not copied: the class column's 'English springer' matches its label
    assert matches("English springer", "English springer") and matches("English springer", "english springer")


@pytest.mark.parametrize("size,resized", [((512, 512), (232, 232)), ((300, 200), (348, 232)),
                                          ((480, 640), (232, 309)), ((232, 500), (232, 500))])
def test_resnet_preprocessing_is_torchvisions_definition(size, resized):
    """Resize the shorter side to 232 (bilinear, antialiased as PIL does), centre crop 224 at
    round((size - 224) / 2), scale to [0, 1], ImageNet mean/std; compared with the same steps done by
    torch's antialiased bilinear interpolation (which follows PIL's filter) on the float image."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    from utils.score.resnet import preprocess, resized_size

    assert resized_size(*size) == resized
    rng = np.random.default_rng(0)
    w, h = size
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)  # smooth-ish content
    arr = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC))
    got = preprocess(Image.fromarray(arr))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].double() / 255
    rw, rh = resized
    if (rw, rh) != (w, h):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((rh - 224) / 2)), int(round((rw - 224) / 2))
    x = x[0, :, top:top + 224, left:left + 224]
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.double).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.double).view(3, 1, 1)
    want = ((x - mean) / std).float()
    assert got.shape == (3, 224, 224)
    err = (got - want).abs()
    # PIL rounds to uint8 after resizing: at most ~1/255 per value, divided by std
    assert float(err.max()) < 1.5 / 255 / 0.224 and float(err.mean()) < 0.4 / 255 / 0.224


def test_classify_objects_cli_with_torchvision_weights(resnet_file, small_run):
    r = run_script("execs/classify_objects.py", "--root", small_run, "--target_class", "tench", "--weights",
                   resnet_file, "--device", "cpu", env=FAST)
    s = json.loads((small_run / "objects_tench.json").read_text())
    assert s["model_id"] == "torchvision/resnet50.IMAGENET1K_V2" and s["weights"]["file"] == "random_resnet50.pth"
    records = [json.loads(x) for x in (small_run / "objects_tench.jsonl").read_text().splitlines()]
    from PIL import Image

    from utils.score.resnet import imagenet_categories, preprocess
    x = torch.stack([preprocess(Image.open(small_run / "imgs" / r_["file"]).convert("RGB")) for r_ in records])
    with torch.no_grad():
        want = functional_resnet50(random_state_dict(), x).argmax(-1).tolist()
    assert [r_["predicted_index"] for r_ in records] == want
    names = imagenet_categories()
    assert [r_["predicted"] for r_ in records] == [names[i] for i in want]
    correct = [r_["predicted"].lower() == r_["class"].lower() for r_ in records]
    assert s["target_accuracy"] == float(correct[0]) and s["other_accuracy"] == float(correct[1])
    assert "torchvision/resnet50.IMAGENET1K_V2" in r.stdout
    bad = run_script("execs/classify_objects.py", "--root", small_run, "--target_class", "tench", "--weights",
                     small_run / "nope.pth", check=False, env=FAST)
    assert bad.returncode == 2 and "nope.pth" in bad.stderr


# --- the FID reference: real COCO images of the 30k captions ---------------------------------------

def test_select_coco30k_copies_real_images_by_coco_id(tmp_path):
    import numpy as np
    import pandas as pd
    from PIL import Image

    coco = tmp_path / "coco"
    (coco / "val2014").mkdir(parents=True)
    (coco / "train2017").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = {1234: coco / "val2014" / "COCO_val2014_000000001234.jpg",
           12345: coco / "train2017" / "000000012345.jpg",          # 1234 is a substring of this name
           99: coco / "val2014" / "COCO_val2014_000000000099.jpg"}
    for p in ids.values():
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(p, quality=90)
    (coco / "val2014" / "notes.txt").write_text("not an image")
    captions = tmp_path / "captions.csv"
    pd.DataFrame({"case_number": [7, 3, 5], "source": "coco-30k", "prompt": ["a", "b", "c"],
                  "evaluation_seed": [1, 2, 3], "coco_id": [12345, 1234, 99]}).to_csv(captions, index=False)
    out = tmp_path / "real"
    run_script("dataset/select_coco30k.py", "--coco_dir", coco, "--prompts_path", captions, "--save_path", out,
               env=FAST)
    for case, coco_id in ((7, 12345), (3, 1234), (5, 99)):
        assert (out / "imgs" / f"{case}_0.jpg").read_bytes() == ids[coco_id].read_bytes()
    df = pd.read_csv(out / "prompts.csv")
    assert list(df["file_name"]) == ["7_0.jpg", "3_0.jpg", "5_0.jpg"] and list(df["coco_id"]) == [12345, 1234, 99]
    from utils.score import images_or_fail, read_run_prompts, rows_for_images
    _, files = images_or_fail(out)
    assert [r["coco_id"] for r in rows_for_images(files, read_run_prompts(out), "prompt")] == [1234, 99, 12345]
    # real PNGs on request: the same pixels as the JPEG decodes
    png = tmp_path / "png"
    run_script("dataset/select_coco30k.py", "--coco_dir", coco, "--prompts_path", captions, "--save_path", png,
               "--png", env=FAST)
    for case, coco_id in ((7, 12345), (3, 1234)):
        with Image.open(png / "imgs" / f"{case}_0.png") as a, Image.open(ids[coco_id]) as b:
            assert a.format == "PNG" and np.array_equal(np.asarray(a), np.asarray(b.convert("RGB")))
    # an id the folder lacks: one line, nothing written
    pd.DataFrame({"case_number": [0], "coco_id": [4242], "prompt": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    r = run_script("dataset/select_coco30k.py", "--coco_dir", coco, "--prompts_path", tmp_path / "bad.csv",
                   "--save_path", tmp_path / "none", check=False, env=FAST)
    assert r.returncode == 2 and "4242" in r.stderr and not (tmp_path / "none").exists()


def test_nudity_script_computes_the_papers_fid_against_real_coco():
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "scripts" / "nudity.sh").read_text()
    assert 'select_coco30k.py --coco_dir "$COCO_DIR"' in text
    assert '--reference "$OUT/coco30k_real"' in text and '--reference "$OUT/coco-sd"' in text


def test_uce_add_prompts_erases_each_template_towards_the_bare_guide(tiny_pipeline_dir, tmp_path):
    """execs/train_uce.py --add_prompts on the tiny model equals the closed form of docs/method.md §2
    with the pairs (template(c), bare guide), written out here per matrix."""
    from transformers import AutoTokenizer, CLIPTextModel

    from utils.erase import closed_form as cf

    run_script("execs/train_uce.py", "--concepts", "tench", "--concept_type", "object", "--add_prompts",
               "--model_id", tiny_pipeline_dir, "--save_path", tmp_path / "uce", env=FAST)
    got = {k: v.double() for k, v in load_file(str(tmp_path / "uce" / "uce.safetensors")).items()}
    tok = AutoTokenizer.from_pretrained(tiny_pipeline_dir, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").eval()

    @torch.no_grad()
    def E(text):
        ids = tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return te(ids.input_ids)[0][0].double(), int(ids.attention_mask.sum()) - 2

    unet = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    W0s = {k: unet[k].double() for k in got}

    def reference(pairs):
        slices = [cf.uce_token_slice(*E(c), *E(g)) for c, g in pairs]
        P = E("")[0]
        out = {}
        for k, W0 in W0s.items():
            left = 0.5 * W0 + sum((T @ W0.T).T @ C for C, T in slices) + (P @ W0.T).T @ P
            right = 0.5 * torch.eye(W0.shape[1], dtype=torch.float64) + sum(C.T @ C for C, _ in slices) + P.T @ P
            out[k] = torch.linalg.solve(right.T, left.T).T
        return out
    templates = ["image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"]
    want = reference([("tench", " ")] + [(t.format("tench"), " ") for t in templates])
    old = reference([("tench", " ")] + [(t.format("tench"), t.format("")) for t in templates])
    for k in got:
        err = float((got[k] - want[k]).abs().max() / want[k].abs().max())
        assert err < 2e-4, (k, err)
    assert max(float((want[k] - old[k]).abs().max()) for k in got) > 1e-3  # the mapping matters
