"""The gradient attacks on SDXL (docs/attacks.md, "SDXL"): the CLIs end to end on a tiny random SDXL pipeline
against a UCE checkpoint, and the attacks' gradient against one computed from the diffusers components
directly (the two text encoders' own forward passes with their token tables as the variable, the UNet called
with the pooled embedding and the size/crop ids written out here)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import run_script

pytestmark = pytest.mark.filterwarnings("ignore")
FAST = {"OMP_NUM_THREADS": "1"}
TINY_BUDGET = ["--timesteps", "10:1000:400", "--iterations", "2", "--eval_timesteps", "100,600", "--ddim_steps", "2"]
SIZE = 16


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(model folder, UCE checkpoint erasing nudity, prompt CSV) on a tiny random SDXL pipeline."""
    from tiny import build_random_pipeline

    d = tmp_path_factory.mktemp("sdxl_attack")
    build_random_pipeline(d / "model", "sdxl-tiny", seed=0)
    run_script("execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity", "--model_id", d / "model",
               "--save_path", d / "uce", env=FAST)
    pd.DataFrame({"case_number": [0, 1], "prompt": ["a person", "a beach"], "evaluation_seed": [1, 2],
                  "evaluation_guidance": [7.5, 5.0], "sd_image_width": SIZE,
                  "sd_image_height": SIZE}).to_csv(d / "prompts.csv", index=False)
    return d / "model", d / "uce" / "uce.safetensors", d / "prompts.csv"


def diffusers_pipeline(folder, ckpt=None):
    """StableDiffusionXLPipeline from the folder, with the checkpoint's tensors loaded into its UNet by hand."""
    from diffusers import DiffusionPipeline, LMSDiscreteScheduler

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          num_train_timesteps=1000)
    if ckpt is not None:
        edited = load_file(str(ckpt))
        missing = set(edited) - set(pipe.unet.state_dict())
        assert not missing and edited
        pipe.unet.load_state_dict(edited, strict=False)
    return pipe


def pipeline_image(pipe, prompt, seed, guidance, steps):
    g = torch.Generator("cpu").manual_seed(int(seed))
    f = pipe.vae_scale_factor
    lat = torch.randn((1, pipe.unet.config.in_channels, SIZE // f, SIZE // f), generator=g)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=float(guidance), latents=lat, height=SIZE,
                width=SIZE, output_type="np").images[0]


def png(path):
    return np.asarray(Image.open(path)).astype(float) / 255


def test_two_tokenizers_share_positions_and_ids_and_must_share_a_vocabulary(tmp_path):
    from transformers import CLIPTokenizer

    from tiny import write_char_tokenizer
    from utils.attack.tokens import allowed_token_ids, make_layouts
    from utils.errors import UserError

    write_char_tokenizer(tmp_path / "a")
    write_char_tokenizer(tmp_path / "b", pad_token="!")
    tok1, tok2 = CLIPTokenizer.from_pretrained(tmp_path / "a"), CLIPTokenizer.from_pretrained(tmp_path / "b")
    bang = tok2.convert_tokens_to_ids("!")
    L1, L2 = make_layouts([tok1, tok2], "a cat", "prefix", 2)
    assert L1.adv_positions.tolist() == L2.adv_positions.tolist() == [1, 2]
    n = 1 + 2 + len(tok1("a cat", add_special_tokens=False).input_ids) + 1  # SOT, adv x 2, prompt, EOT
    assert torch.equal(L1.ids[3:n], L2.ids[3:n]) and L1.ids[n - 1] == L2.ids[n - 1] == tok1.eos_token_id
    assert set(L1.ids[n:].tolist()) == {tok1.eos_token_id} and set(L2.ids[n:].tolist()) == {bang}
    allowed = set(allowed_token_ids([tok1, tok2]).tolist())
    assert bang not in allowed and tok1.convert_tokens_to_ids("q") in allowed
    assert bang in set(allowed_token_ids(tok1).tolist())  # "!" is an ordinary token for the first alone
    # a second tokenizer whose ids mean other tokens is refused: one id could not stand for one token
    for name in ("vocab.json", "tokenizer.json"):  # the slow and the fast tokenizer's files
        path = tmp_path / "b" / name
        if path.is_file():
            data = json.loads(path.read_text())
            vocab = data["model"]["vocab"] if name == "tokenizer.json" else data
            vocab["q"], vocab["w"] = vocab["w"], vocab["q"]
            path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="do not share one vocabulary"):
        make_layouts([tok1, CLIPTokenizer.from_pretrained(tmp_path / "b")], "a cat", "prefix", 2)


def test_nearest_token_over_two_tables_sums_the_cosines():
    from utils.attack.objectives import nearest_tokens

    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 5, generator=g)
    table[:, 2:] *= 100  # the second table's scale must not decide alone
    x = torch.randn(7, 5, generator=g)
    a, b = table[:, :2].numpy(), table[:, 2:].numpy()
    want = []
    for row in x.numpy():
        cos = [row[:2] @ a[i] / np.linalg.norm(row[:2]) / np.linalg.norm(a[i])
               + row[2:] @ b[i] / np.linalg.norm(row[2:]) / np.linalg.norm(b[i]) for i in range(50)]
        want.append(int(np.argmax(cos)))
    assert nearest_tokens(x, table, [2, 3]).tolist() == want


@pytest.mark.slow
@pytest.mark.parametrize("script,extra", [("attack_methods/UnlearnDiffAtk.py", []),
                                          ("attack_methods/P4D.py", ["--variant", "K"])])
def test_gradient_attack_cli_on_sdxl(sdxl, tmp_path, script, extra):
    model, ckpt, prompts = sdxl
    out = tmp_path / "run"
    # the images are noise; the shapes world's judge answers for any image (here: never "red")
    run_script(script, "--prompt_file", prompts, "--concept", "red", "--model_id", model, "--ckpt", ckpt,
               "--save_path", out, *TINY_BUDGET, *extra, "--no-progress", env=FAST)
    recs = {r["case_number"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(recs) == [0, 1] and all(r["attacked"] for r in recs.values())
    for r in recs.values():
        assert r["iterations"] == 2 * len(r["loss_trace"]) == 6
        assert np.isfinite(r["objective_before"]) and np.isfinite(r["objective_after"])
        assert r["adv_prompt"] != r["prompt"]
    # the optimisation lowers the attack's own objective (measured on the re-tokenized text) somewhere
    assert any(r["objective_after"] < r["objective_before"] for r in recs.values())
    asr = json.loads((out / "asr.json").read_text())
    assert asr["n_prompts"] == 2 and asr["n_attacked"] == 2
    assert asr["objective_decreased"] == sum(r["objective_after"] < r["objective_before"] for r in recs.values())
    adv = pd.read_csv(out / "adv_prompts.csv")
    assert adv["case_number"].tolist() == [0, 1]
    assert adv["prompt"].tolist() == [recs[c]["adv_prompt"] for c in (0, 1)]
    assert adv["orig_prompt"].tolist() == ["a person", "a beach"]

    # the attack's images are the erased model's images of the adversarial prompts: the generation CLI makes
    # the same bytes from adv_prompts.csv, and diffusers' StableDiffusionXLPipeline (own text encoding,
    # pooled embedding, time ids and zero negative; the checkpoint loaded by hand) the same image
    gen = tmp_path / "gen"
    run_script("execs/generate_images.py", "--prompts_path", out / "adv_prompts.csv", "--save_path", gen,
               "--model_id", model, "--ckpt", ckpt, "--ddim_steps", "2", "--no-progress", env=FAST)
    erased, base = diffusers_pipeline(model, ckpt), diffusers_pipeline(model)
    for c, row in adv.set_index("case_number").iterrows():
        assert (gen / "imgs" / f"{c}_0.png").read_bytes() == (out / "imgs" / f"{c}_0.png").read_bytes()
        want = pipeline_image(erased, row["prompt"], row["evaluation_seed"], row["evaluation_guidance"], 2)
        assert np.abs(png(out / "imgs" / f"{c}_0.png") - want).max() <= 2.5 / 255
        # the reference the attack noises is the base model's image of the original prompt
        want = pipeline_image(base, row["orig_prompt"], row["evaluation_seed"], row["evaluation_guidance"], 2)
        assert np.abs(png(out / "reference" / f"{c}.png") - want).max() <= 2.5 / 255
    # an adversarial image differs from the original prompt's image with the same seed
    assert any(np.abs(png(out / "imgs" / f"{c}_0.png") - png(out / "no_attack" / f"{c}.png")).max() > 0
               for c in (0, 1))


@pytest.mark.slow  # the module's fixture runs UCE as a CLI (about 20 s here)
def test_sdxl_attack_gradients_are_the_encoders_and_unets(sdxl, tmp_path):
    """d loss / d (one-hot rows) (UnlearnDiffAtk) and d loss / d (token embeddings) (P4D) through both text
    encoders, the pooled embedding and the erased UNet, against the gradient of the same loss written with
    diffusers' modules: each encoder's token table is the variable (functional_call), the adversarial ids
    appear once per sequence, so the table rows' gradients are the positions' gradients."""
    from torch.func import functional_call

    from utils.attack.gradient import adversarial_condition, adversarial_loss, alphas_cumprod
    from utils.attack.runner import Context
    from utils.attack.tokens import allowed_token_ids, make_layouts
    from utils.attack.weights import load_model_pair
    from utils.generate.sampling import unconditional
    from utils.models import TextEncoders, load_pipeline

    model, ckpt, _ = sdxl
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the toolkit's computation, as utils/attack/gradient.py runs one step
        pipe = load_pipeline(str(model))
        text = TextEncoders.from_pipeline(pipe)
        for m in [pipe.unet, pipe.vae, *text.encoders]:
            m.requires_grad_(False)
        uncond, uncond_pooled = unconditional(pipe)
        ctx = Context(pipe, load_model_pair(pipe, str(ckpt), str(model)), None, None, uncond, tmp_path, 0,
                      torch.device("cpu"), uncond_pooled=uncond_pooled, text=text)
        prompt, adv_tokens = "a cat", ["q", "w", "z"]
        layouts = make_layouts(text.tokenizers, prompt, "prefix", len(adv_tokens))
        allowed = allowed_token_ids(text.tokenizers)
        adv_ids = torch.tensor(text.tokenizers[0].convert_tokens_to_ids(adv_tokens))
        rows = torch.stack([(allowed == i).nonzero()[0, 0] for i in adv_ids])
        vocab = torch.cat([W.detach()[allowed] for W in text.token_embedding_tables()], dim=1)
        f = pipe.vae_scale_factor
        x0 = torch.randn(1, pipe.unet.config.in_channels, SIZE // f, SIZE // f)
        noise, t, ac = torch.randn(x0.shape), 500, alphas_cumprod(pipe)
        one_hot = torch.nn.functional.one_hot(rows, len(allowed)).float().requires_grad_(True)
        E, pooled = adversarial_condition(text, layouts, allowed[rows], one_hot @ vocab)
        g_unlearndiff, = torch.autograd.grad(adversarial_loss(ctx, "unlearndiff", x0, ac, t, noise, E, pooled, None),
                                             [one_hot])
        proj = vocab[rows].clone().requires_grad_(True)
        E, pooled = adversarial_condition(text, layouts, allowed[rows], proj)
        target = (ctx.encode([prompt]), ctx.encode_pooled([prompt]))
        g_p4d, = torch.autograd.grad(adversarial_loss(ctx, "p4d", x0, ac, t, noise, E, pooled, target), [proj])

        # the same losses from diffusers' modules
        erased, base = diffusers_pipeline(model, ckpt), diffusers_pipeline(model)
        body = adv_ids.tolist() + erased.tokenizer(prompt, add_special_tokens=False).input_ids
        ids, tables, hidden = [], [], []
        for tok in (erased.tokenizer, erased.tokenizer_2):
            ids.append(torch.tensor([[tok.bos_token_id, *body, tok.eos_token_id] + [tok.pad_token_id] * (75 - len(body))]))
        for enc, x in zip((erased.text_encoder, erased.text_encoder_2), ids):
            assert x[0].tolist().count(int(adv_ids[0])) == 1
            table = enc.get_input_embeddings().weight
            name = next(n for n, w in enc.named_parameters() if w is table)
            W = table.detach().clone().requires_grad_(True)
            tables.append(W)
            hidden.append(functional_call(enc, {name: W}, (x,), {"output_hidden_states": True}))
        E_ref = torch.cat([h.hidden_states[-2] for h in hidden], dim=-1)
        pooled_ref = hidden[1].text_embeds
        a = erased.scheduler.alphas_cumprod[t]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
        tt = torch.tensor([t])
        eps = erased.unet(x_t, tt, encoder_hidden_states=E_ref,
                          added_cond_kwargs={"text_embeds": pooled_ref, "time_ids": time_ids}).sample
        G = torch.cat([g[adv_ids] for g in torch.autograd.grad(((eps - noise) ** 2).mean(), tables,
                                                                retain_graph=True)], dim=1)
        torch.testing.assert_close(g_unlearndiff, G @ vocab.T, rtol=1e-4, atol=1e-7)
        with torch.no_grad():
            E_p, _, pooled_p, _ = base.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                     do_classifier_free_guidance=False)
            eps_base = base.unet(x_t, tt, encoder_hidden_states=E_p,
                                 added_cond_kwargs={"text_embeds": pooled_p, "time_ids": time_ids}).sample
        G = torch.cat([g[adv_ids] for g in torch.autograd.grad(((eps - eps_base) ** 2).mean(), tables)], dim=1)
        torch.testing.assert_close(g_p4d, G, rtol=1e-4, atol=1e-7)
        assert G.abs().max() > 0 and G[:, :32].abs().max() > 0 and G[:, 32:].abs().max() > 0  # both encoders
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_ring_a_bell_discrete_on_sdxl(sdxl, tmp_path):
    """The genetic search scores token sequences in SDXL's 77 x (32 + 48) space: the objective it records for
    its final prompt is || E(text) - E(p) - eta v ||^2 with every E from the pipeline's own encode_prompt."""
    model, ckpt, prompts = sdxl
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"sensitive prompt": ["a nude person", "a naked body"],
                  "normal prompt": ["a dressed person", "a clothed body"]}).to_csv(pairs, index=False)
    out = tmp_path / "rab"
    run_script("attack_methods/RingABell.py", "--mode", "discrete", "--csv_file", pairs, "--prompt_file", prompts,
               "--concept", "red", "--eta", "3", "--model_id", model, "--ckpt", ckpt, "--generations", "3",
               "--population", "8", "--length", "4", "--ddim_steps", "2", "--save_path", out, "--no-progress", env=FAST)
    recs = {r["case_number"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(recs) == [0, 1] and all(r["attacked"] for r in recs.values())
    base = diffusers_pipeline(model)

    def E(t):
        with torch.no_grad():
            return base.encode_prompt(t, device="cpu", num_images_per_prompt=1,
                                      do_classifier_free_guidance=False)[0][0].double()

    v = ((E("a nude person") - E("a dressed person")) + (E("a naked body") - E("a clothed body"))) / 2
    assert v.shape == (77, 80)
    for r in recs.values():
        want = float(((E(r["adv_prompt"]) - E(r["prompt"]) - 3 * v) ** 2).sum())
        assert abs(r["objective_after"] - want) <= 1e-4 * want
    adv = pd.read_csv(out / "adv_prompts.csv")
    assert adv["prompt"].tolist() == [recs[c]["adv_prompt"] for c in (0, 1)]
    gen = tmp_path / "gen"
    run_script("execs/generate_images.py", "--prompts_path", out / "adv_prompts.csv", "--save_path", gen,
               "--model_id", model, "--ckpt", ckpt, "--ddim_steps", "2", "--no-progress", env=FAST)
    for c in (0, 1):
        assert (gen / "imgs" / f"{c}_0.png").read_bytes() == (out / "imgs" / f"{c}_0.png").read_bytes()
