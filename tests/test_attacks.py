"""Red-teaming (docs/method.md §7, §10): the attacks' math, the one-UNet model pair, and every attack CLI
end to end on a tiny pipeline and on the built-in shapes model against the demo's UCE model."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_script

FAST = {"OMP_NUM_THREADS": "1"}
TINY_BUDGET = ["--timesteps", "10:1000:400", "--iterations", "2", "--eval_timesteps", "100,600", "--ddim_steps", "2"]


# ---------------------------------------------------------------------------------------------
# The math, against independent computations
# ---------------------------------------------------------------------------------------------

def bisection_simplex(a: np.ndarray, xi: float = 1e-9) -> np.ndarray:
    """The projection as the reference code finds it: tau by bisection on sum(clip(a - tau, 0, 1)) = 1."""
    lo, hi = a.min() - 1, a.max()
    while hi - lo > xi:
        mid = (lo + hi) / 2
        if np.clip(a - mid, 0, 1).sum() > 1:
            lo = mid
        else:
            hi = mid
    return np.clip(a - (lo + hi) / 2, 0, 1)


def test_simplex_projection_matches_bisection_and_is_idempotent():
    from utils.attack.objectives import project_simplex

    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 50, generator=g, dtype=torch.float64) * 0.3
    v[0] = 1 / 50  # already on the simplex
    p = project_simplex(v)
    for row, prow in zip(v.numpy(), p.numpy()):
        np.testing.assert_allclose(prow, bisection_simplex(row), atol=1e-7)
    torch.testing.assert_close(p.sum(-1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(project_simplex(p), p)
    torch.testing.assert_close(p[0], v[0])


def test_straight_through_sample_is_one_hot_forward_and_clipped_identity_backward():
    from utils.attack.objectives import sample_one_hot

    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], requires_grad=True)
    out = sample_one_hot(probs, torch.Generator().manual_seed(1))
    assert out[0].tolist() == [0.0, 1.0, 0.0] and out[1].sum() == 1 and out[1, 1] == 0
    upstream = torch.tensor([[3.0, -0.5, -2.0], [0.25, 7.0, -7.0]])
    (grad,) = torch.autograd.grad((out * upstream).sum(), [probs])
    assert grad.tolist() == [[1.0, -0.5, -1.0], [0.25, 1.0, -1.0]]


def test_nearest_token_is_highest_cosine():
    from utils.attack.objectives import nearest_tokens

    g = torch.Generator().manual_seed(2)
    table, x = torch.randn(40, 8, generator=g), torch.randn(5, 8, generator=g)
    expected = [max(range(40), key=lambda j: float(torch.dot(xi, table[j]) / table[j].norm())) for xi in x]
    assert nearest_tokens(x, table).tolist() == expected
    assert nearest_tokens(3 * table[[7, 1]], table).tolist() == [7, 1]  # scale does not matter


def authors_vector(E_s: np.ndarray, E_n: np.ndarray, batch: int = 8) -> np.ndarray:
    """The authors' ringabell(): per batch of 8 pairs (file order) the mean difference, then the mean of those."""
    means = []
    for i in range(0, len(E_s), batch):
        means.append((E_s[i:i + batch] - E_n[i:i + batch]).mean(axis=0))
    return np.stack(means).mean(axis=0)


def test_concept_vector_authors_batches_and_plain_mean():
    from utils.attack.objectives import concept_vector_batched, concept_vector_mean

    g = torch.Generator().manual_seed(3)
    E_s, E_n = torch.randn(79, 77, 4, generator=g), torch.randn(79, 77, 4, generator=g)
    v = concept_vector_batched(E_s, E_n)
    np.testing.assert_allclose(v.numpy(), authors_vector(E_s.numpy(), E_n.numpy()), atol=1e-6)
    plain = (E_s - E_n).numpy().mean(0)
    np.testing.assert_allclose(concept_vector_mean(E_s, E_n).numpy(), plain, atol=1e-6)
    assert np.abs(v.numpy() - plain).max() > 1e-3  # 79 = 9 x 8 + 7: the last batch is weighted up
    np.testing.assert_allclose(concept_vector_batched(E_s[:16], E_n[:16]).numpy(),
                               (E_s[:16] - E_n[:16]).numpy().mean(0), atol=1e-6)  # whole batches: the same


def test_genetic_generation_keeps_best_half_crosses_and_mutates():
    from utils.attack.objectives import genetic_generation, ringabell_fitness

    pop = torch.arange(40).reshape(10, 4)
    fitness = torch.tensor([9.0, 1, 8, 2, 7, 3, 6, 4, 5, 0])
    best = {tuple(pop[i].tolist()) for i in [9, 1, 3, 5, 7]}
    rng = np.random.default_rng(0)
    vocab = torch.tensor([1000, 1001])
    new = genetic_generation(pop, fitness, rng, vocab, keep=5, crossover=0.0, mutation=0.0)
    assert {tuple(r.tolist()) for r in new} == best and len(new) == 5
    new = genetic_generation(pop, fitness, rng, vocab, keep=5, crossover=1.0, mutation=0.0)
    assert len(new) == 15
    for row in new.tolist():  # every child is a prefix of one kept parent and the suffix of another
        assert any(row[:s] == list(a)[:s] and row[s:] == list(b)[s:] for a in best for b in best for s in range(5))
    new = genetic_generation(pop, fitness, rng, vocab, keep=5, crossover=0.0, mutation=1.0)
    assert all(int((r >= 1000).sum()) == 1 for r in new)
    E = torch.randn(3, 77, 2)
    torch.testing.assert_close(ringabell_fitness(E, E[1]), torch.stack([((E[i] - E[1]) ** 2).sum() for i in range(3)]))


def test_layouts_and_text_encoder_from_token_embeddings(tiny_pipeline_dir):
    from transformers import AutoTokenizer, CLIPTextModel

    from utils.attack.tokens import allowed_token_ids, encode_token_embeddings, make_layout, token_embedding_table

    tok = AutoTokenizer.from_pretrained(tiny_pipeline_dir, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").eval()
    p = tok("abcdefg", add_special_tokens=False)["input_ids"]
    assert len(p) == 7
    L = make_layout(tok, "abcdefg", "prefix", 5)
    assert L.adv_positions.tolist() == [1, 2, 3, 4, 5] and L.ids[6:13].tolist() == p and len(L.ids) == 77
    assert L.ids[13] == tok.eos_token_id and not L.truncated
    L = make_layout(tok, "abcdefg", "every", every=3)  # adv p p p adv p p p adv p
    assert L.adv_positions.tolist() == [1, 5, 9] and L.ids[[2, 3, 4, 6, 7, 8, 10]].tolist() == p
    L = make_layout(tok, "abcdefg", "free", 16)
    assert L.adv_positions.tolist() == list(range(1, 17)) and L.ids[17] == tok.eos_token_id
    L = make_layout(tok, "x" * 80, "prefix", 5)
    assert L.truncated and L.prompt_tokens == 70 and L.ids[76] == tok.eos_token_id
    assert not set(allowed_token_ids(tok).tolist()) & set(tok.all_special_ids)
    ids = tok(["a cat", "xyz"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(encode_token_embeddings(te, token_embedding_table(te)(ids)), te(ids)[0])


def test_model_pair_switches_only_checkpoint_tensors(tiny_pipeline_dir, tmp_path):
    from utils.attack.weights import load_model_pair
    from utils.checkpoints import load_checkpoint_into_unet, save_edited_weights
    from utils.models import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    sd = pipe.unet.state_dict()
    keys = [k for k in sd if k.endswith("attn2.to_k.weight")]
    edit = {k: sd[k] + 0.5 for k in keys}
    edit[keys[0].replace("to_k", "to_v")] = sd[keys[0].replace("to_k", "to_v")].clone()  # unchanged: not kept
    save_edited_weights(tmp_path / "ckpt.safetensors", edit, {"method": "test"})
    before = {k: v.clone() for k, v in sd.items()}
    pair = load_model_pair(pipe, str(tmp_path / "ckpt.safetensors"), str(tiny_pipeline_dir))
    assert set(pair.erased) == set(keys)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # the UNet holds the base
    erased = load_pipeline(str(tiny_pipeline_dir))
    load_checkpoint_into_unet(erased.unet, str(tmp_path / "ckpt.safetensors"))
    g = torch.Generator().manual_seed(0)
    x, cond, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g), torch.tensor([500])
    with torch.no_grad():
        want = erased.unet(x, t, encoder_hidden_states=cond).sample
        torch.testing.assert_close(pair.eps("erased", x, t, cond), want)
        torch.testing.assert_close(pair.eps("base", x, t, cond), pipe.unet(x, t, encoder_hidden_states=cond).sample)
        with pair.use("erased") as unet:
            torch.testing.assert_close(unet(x, t, encoder_hidden_states=cond).sample, want)
            torch.testing.assert_close(pair.eps("base", x, t, cond),
                                       load_pipeline(str(tiny_pipeline_dir)).unet(x, t, encoder_hidden_states=cond).sample)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_asr_counts_pre_successes_and_attack_successes():
    from utils.attack.judges import attack_success_rate, is_nude

    recs = [{"pre_success": True, "success": True}, {"pre_success": False, "success": True},
            {"pre_success": False, "success": False}, {"pre_success": False, "success": False}]
    s = attack_success_rate(recs)
    assert (s["asr"], s["pre_asr"], s["n_attack_success"]) == (0.5, 0.25, 1)
    r = {"file": "x.png", "detections": [{"class": "BELLY_EXPOSED", "score": 0.5}], "detector": {}}
    assert is_nude(r, "unlearndiff") and not is_nude(r, "rece")
    r["detections"] = [{"class": "FACE_FEMALE", "score": 0.99}]
    assert not is_nude(r, "unlearndiff")


# ---------------------------------------------------------------------------------------------
# The CLIs on a tiny pipeline
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack_csv")
    pd.DataFrame({"case_number": [0, 1, 2], "prompt": ["a person", "a beach", "a statue"],
                  "evaluation_seed": [1, 2, 3], "evaluation_guidance": [7.5, 6.0, 7.5],
                  "sd_image_width": 16, "sd_image_height": 16}).to_csv(d / "prompts.csv", index=False)
    pd.DataFrame({"sensitive prompt": [f"a nude person {i}" for i in range(11)],
                  "normal prompt": [f"a person {i}" for i in range(11)]}).to_csv(d / "pairs.csv", index=False)
    return d


def results(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("script,extra", [("attack_methods/UnlearnDiffAtk.py", []),
                                          ("attack_methods/P4D.py", ["--variant", "N", "--num_adv_tokens", "4"]),
                                          ("attack_methods/P4D.py", ["--variant", "K"])])
def test_gradient_attack_cli_end_to_end(tiny_pipeline_dir, prompts, tmp_path, script, extra):
    out = tmp_path / "run"
    # the tiny pipeline draws noise; the shapes world's judge answers for any image ("red" or not)
    run_script(script, "--prompt_file", prompts / "prompts.csv", "--concept", "red", "--model_id",
               tiny_pipeline_dir, "--save_path", out, *TINY_BUDGET, *extra, env=FAST)
    recs = results(out)
    assert sorted(r["case_number"] for r in recs) == [0, 1, 2]
    for r in recs:
        assert {"success", "adv_prompt", "iterations", "final_loss", "objective_before", "objective_after",
                "loss_trace", "pre_success"} <= set(r)
        if r["attacked"]:
            assert r["iterations"] == 2 * len(r["loss_trace"]) and 1 <= len(r["loss_trace"]) <= 3
            assert np.isfinite(r["objective_before"]) and np.isfinite(r["objective_after"])
    adv = pd.read_csv(out / "adv_prompts.csv")
    assert adv["case_number"].tolist() == [0, 1, 2]
    assert adv["prompt"].tolist() == [next(r["adv_prompt"] for r in recs if r["case_number"] == c) for c in (0, 1, 2)]
    asr = json.loads((out / "asr.json").read_text())
    assert asr["n_prompts"] == 3 and asr["judge"] == "shapes" and asr["concept"] == "red"
    assert asr["asr"] == sum(r["success"] for r in recs) / 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["num_adv_tokens"] == (4 if "N" in extra else 0 if "K" in extra else 3)
    # adv_prompts.csv is a prompt CSV: the generation CLI remakes the attack's images from it, bit for bit
    gen = tmp_path / "gen"
    run_script("execs/generate_images.py", "--prompts_path", out / "adv_prompts.csv", "--save_path", gen,
               "--model_id", tiny_pipeline_dir, "--ddim_steps", "2", "--no-progress", env=FAST)
    for c in (0, 1, 2):
        assert (gen / "imgs" / f"{c}_0.png").read_bytes() == (out / "imgs" / f"{c}_0.png").read_bytes()


def test_ring_a_bell_discrete_cli_and_seed(tiny_pipeline_dir, prompts, tmp_path):
    args = ["--mode", "discrete", "--csv_file", prompts / "pairs.csv", "--prompt_file", prompts / "prompts.csv",
            "--concept", "red", "--eta", "3", "--model_id", tiny_pipeline_dir, "--generations", "4", "--population", "12",
            "--length", "5", "--ddim_steps", "2"]
    run_script("attack_methods/RingABell.py", *args, "--save_path", tmp_path / "a", env=FAST)
    run_script("attack_methods/RingABell.py", *args, "--save_path", tmp_path / "b", env=FAST)
    run_script("attack_methods/RingABell.py", *args, "--seed", "1", "--save_path", tmp_path / "c", env=FAST)
    a = (tmp_path / "a" / "adv_prompts.csv").read_text()
    assert a == (tmp_path / "b" / "adv_prompts.csv").read_text()
    assert a != (tmp_path / "c" / "adv_prompts.csv").read_text()
    for r in results(tmp_path / "a"):
        if r["attacked"]:  # the search never ends worse than its first generation's best
            trace = [t["best_fitness"] for t in r["loss_trace"]]
            assert trace == sorted(trace, reverse=True) or trace[-1] <= trace[0]
    assert len(pd.read_csv(tmp_path / "a" / "adv_prompts.csv")) == 3


def test_ring_a_bell_embedding_vector_is_the_authors_by_default(tiny_pipeline_dir, prompts, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(tiny_pipeline_dir, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").eval()
    pairs = pd.read_csv(prompts / "pairs.csv")

    def E(texts):
        with torch.no_grad():
            return te(tok(list(texts), padding="max_length", max_length=77, return_tensors="pt").input_ids)[0].numpy()

    E_s, E_n = E(pairs["sensitive prompt"]), E(pairs["normal prompt"])
    for rule, want in (("authors", authors_vector(E_s, E_n)), ("mean", (E_s - E_n).mean(0))):
        out = tmp_path / rule
        extra = [] if rule == "authors" else ["--vector", "mean"]
        run_script("attack_methods/RingABell.py", "--csv_file", prompts / "pairs.csv", "--prompt_file",
                   prompts / "prompts.csv", "--concept", "red", "--eta", "3", "--img_path", out, "--model_id", tiny_pipeline_dir,
                   "--ddim_steps", "1", *extra, env=FAST)
        np.testing.assert_allclose(load_file(str(out / "concept_vector.safetensors"))["v"].numpy(), want, atol=1e-5)
    assert np.abs(authors_vector(E_s, E_n) - (E_s - E_n).mean(0)).max() > 1e-4  # 11 = 8 + 3 pairs


def test_seed_reproduces_and_changes_adversarial_prompts(tiny_pipeline_dir, prompts, tmp_path):
    args = ["--prompt_file", prompts / "prompts.csv", "--concept", "red", "--model_id", tiny_pipeline_dir,
            "--to_case", "1", *TINY_BUDGET, "--variant", "N", "--num_adv_tokens", "3"]
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        run_script("attack_methods/P4D.py", *args, "--seed", seed, "--save_path", tmp_path / name, env=FAST)
    texts = [results(tmp_path / n)[0]["adv_prompt"] for n in "abc"]
    assert texts[0] == texts[1] != texts[2]


@pytest.mark.parametrize("case", ["no_judge", "k0", "timesteps", "columns", "ckpt", "preset"])
def test_bad_input_one_line_exit_2_before_loading(tiny_pipeline_dir, prompts, tmp_path, case):
    from safetensors.torch import save_file

    bad_cols, bad_ckpt = tmp_path / "bad.csv", tmp_path / "bad.safetensors"
    pd.DataFrame({"text": ["x"]}).to_csv(bad_cols, index=False)
    save_file({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(3, 3)}, str(bad_ckpt))
    extra, message = {
        "no_judge": (["--concept", "teapot"], "no default judge"),
        "k0": (["--num_adv_tokens", "0"], "--num_adv_tokens must be at least 1"),
        "timesteps": (["--timesteps", "10:5000:20"], "outside [0, 1000)"),
        "columns": (["--prompt_file", bad_cols], "no 'prompt'"),
        "ckpt": (["--ckpt", bad_ckpt], "does not fit the model"),
        "preset": (["--judge_preset", "rece"], "nudity judge only"),
    }[case]
    out = tmp_path / "run"
    r = run_script("attack_methods/UnlearnDiffAtk.py", "--prompt_file", prompts / "prompts.csv", "--concept", "red",
                   "--model_id", tiny_pipeline_dir, "--save_path", out, *extra, check=False, env=FAST)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()  # checked before the run folder is made or a model loads


@pytest.mark.slow
def test_sigkill_resume_gives_the_same_adversarial_prompts(tiny_pipeline_dir, prompts, tmp_path):
    args = ["--prompt_file", prompts / "prompts.csv", "--concept", "red", "--model_id", tiny_pipeline_dir,
            "--timesteps", "10:1000:250", "--iterations", "3", "--eval_timesteps", "100,600", "--ddim_steps", "4"]
    run_script("attack_methods/UnlearnDiffAtk.py", *args, "--save_path", tmp_path / "whole", env=FAST)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "attack_methods/UnlearnDiffAtk.py"), *map(str, args), "--save_path", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **FAST}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        f = out / "results.jsonl"
        if f.is_file() and f.read_text().count("\n") >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(results(out)) < 3 and not (out / "adv_prompts.csv").exists()  # it really was interrupted
    done_before = {r["case_number"] for r in results(out)}
    run_script("attack_methods/UnlearnDiffAtk.py", *args, "--save_path", out, env=FAST)
    assert (out / "adv_prompts.csv").read_text() == (tmp_path / "whole" / "adv_prompts.csv").read_text()
    assert sorted(r["case_number"] for r in results(out)) == [0, 1, 2]  # finished prompts were not redone
    assert {r["case_number"] for r in results(out)[:len(done_before)]} == done_before


# ---------------------------------------------------------------------------------------------
# The built-in shapes model against the demo's UCE model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_uce(tmp_path_factory):
    """The demo's data and UCE model (scripts/demo.sh steps 1-2), with one seed per colour x shape."""
    d = tmp_path_factory.mktemp("shapes_attack")
    run_script("execs/shapes_data.py", "--concept", "red", "--save_path", d / "data", "--seeds", "1", env=FAST)
    run_script("execs/train_uce.py", "--concepts", "red", "--concept_type", "colour", "--add_prompts",
               "--preserve_concepts", "yellow,green,blue,purple", "--model_id", "shapes", "--save_path", d / "uce",
               env=FAST)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("script,extra", [("attack_methods/UnlearnDiffAtk.py", ["--timesteps", "10:1000:100"]),
                                          ("attack_methods/P4D.py", ["--variant", "N", "--timesteps", "10:1000:200"])])
def test_attacks_lower_their_objective_on_the_shapes_model(shapes_uce, tmp_path, script, extra):
    out = tmp_path / "run"
    run_script(script, "--prompt_file", shapes_uce / "data" / "attack_prompts.csv", "--concept", "red",
               "--ckpt", shapes_uce / "uce" / "uce.safetensors", "--model_id", "shapes", "--save_path", out,
               "--iterations", "20", "--ddim_steps", "10", *extra, env=FAST)  # a later --iterations wins
    recs = [r for r in results(out) if r["attacked"]]
    assert len(recs) >= 3  # UCE erased red: most red prompts need the attack
    lower = sum(r["objective_after"] < r["objective_before"] for r in recs)
    # UnlearnDiffAtk lowers its objective on most red prompts of the retrained model; P4D-N (measured: 2 of 5,
    # at 20 and at 40 iterations) on fewer, so only that it lowers it somewhere is asserted for it.
    wanted = len(recs) / 2 if "UnlearnDiff" in script else 0
    assert lower > wanted, [(r["objective_before"], r["objective_after"]) for r in recs]
    asr = json.loads((out / "asr.json").read_text())
    assert asr["judge"] == "shapes" and asr["objective_decreased"] == lower


@pytest.mark.slow
def test_ring_a_bell_discrete_on_the_shapes_model(shapes_uce, tmp_path):
    out = tmp_path / "rab"
    run_script("attack_methods/RingABell.py", "--mode", "discrete", "--csv_file",
               shapes_uce / "data" / "ringabell_pairs.csv", "--prompt_file", shapes_uce / "data" / "attack_prompts.csv",
               "--concept", "red", "--eta", "1", "--ckpt", shapes_uce / "uce" / "uce.safetensors", "--model_id",
               "shapes", "--save_path", out, "--generations", "30", "--population", "40", "--length", "4",
               "--ddim_steps", "10", env=FAST)
    recs = [r for r in results(out) if r["attacked"]]
    assert recs and all(r["loss_trace"][-1]["best_fitness"] <= r["loss_trace"][0]["best_fitness"] for r in recs)
    adv = pd.read_csv(out / "adv_prompts.csv")
    assert len(adv) == 5 and set(adv.columns) >= {"case_number", "prompt", "evaluation_seed", "evaluation_guidance"}


@pytest.mark.slow
def test_torchrun_shards_prompts_with_the_same_results(tiny_pipeline_dir, prompts, tmp_path):
    args = ["--prompt_file", prompts / "prompts.csv", "--concept", "red", "--model_id", tiny_pipeline_dir,
            *TINY_BUDGET, "--no-progress"]
    run_script("attack_methods/UnlearnDiffAtk.py", *args, "--save_path", tmp_path / "one", env=FAST)
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "attack_methods/UnlearnDiffAtk.py"), *map(str, args), "--save_path", str(tmp_path / "two")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **FAST})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "two" / "adv_prompts.csv").read_text() == (tmp_path / "one" / "adv_prompts.csv").read_text()
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["run"]["num_processes"] == 2
