"""Time and peak memory of the attacks' steps: one model in memory against the straightforward two.

    python benchmarks/attack_speed.py                        # SD 1.4's shapes, random weights, CPU, 256 and 64 px
    python benchmarks/attack_speed.py --sizes 512,256 --device cuda --out attack_speed.json

Builds a pipeline with Stable Diffusion 1.4's exact shapes and random weights (offline, tests/tiny.py)
and a UCE-like checkpoint (its 32 attn2 K/V matrices perturbed), then measures, each in a fresh
process so that its peak memory is its own:
- one UnlearnDiffAtk iteration (straight-through one-hot sample of k = 5 token distributions, text
  encoder, erased UNet forward and backward to the distributions, Adam step, simplex projection);
- one P4D iteration (nearest-token projection of 16 embeddings, base UNet forward on the prompt,
  erased UNet forward and backward, Adam step);
each at every --sizes image size, the toolkit's way (`utils.attack.weights.ModelPair`: one UNet, the
checkpoint's tensors called functionally) and the straightforward way (a second UNet, deep-copied
and loaded with the checkpoint, as the reference implementations hold the base and the erased
model); and one generation of the discrete Ring-A-Bell search (population 200, one batched text-encoder
pass). Peak memory is the process's peak resident set (CPU) or peak allocated CUDA memory. Prints
one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from utils.errors import UserError, run_cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "sd14"], default="sd14", help="random-weight pipeline (default sd14)")
    p.add_argument("--sizes", default="256,64", help="image sides, comma-separated (default 256,64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--workdir", default=None, help="folder for the pipeline (default: a temporary folder)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "WAY"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_memory_gb(device) -> float:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def child(args, method: str, way: str) -> dict:
    """One measurement in this process: load, then one iteration per size (or one genetic generation)."""
    import copy

    import numpy as np
    import torch

    from utils.attack.objectives import (genetic_generation, nearest_tokens, noised_latent, p4d_loss, project_simplex,
                                         ringabell_fitness, sample_one_hot, unlearndiff_loss)
    from utils.attack.tokens import allowed_token_ids, encode_token_embeddings, make_layout, token_embedding_table
    from utils.attack.weights import load_model_pair
    from utils.checkpoints import load_checkpoint_into_unet
    from utils.models import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    folder, device = Path(args.workdir), torch.device(args.device)
    model, ckpt = str(folder / "pipe"), str(folder / "ckpt.safetensors")
    out = {"method": method, "way": way}
    t0 = time.perf_counter()
    pipe = load_pipeline(model, device=device)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.requires_grad_(False)
    tok, te = pipe.tokenizer, pipe.text_encoder
    allowed = allowed_token_ids(tok)
    vocab = token_embedding_table(te).weight.detach()[allowed.to(device)]
    if method == "genetic":
        from utils.attack.genetic import embed_ids

        layout = make_layout(tok, "", "free", 16)
        rng = np.random.default_rng(0)
        pop = allowed[torch.from_numpy(rng.integers(0, len(allowed), size=(200, 16)))]
        target = torch.randn(77, te.config.hidden_size)
        out["load_seconds"] = time.perf_counter() - t0
        t = time.perf_counter()
        ids = layout.ids.repeat(len(pop), 1)
        ids[:, layout.adv_positions] = pop
        fitness = ringabell_fitness(embed_ids(te, ids, batch_size=200), target)
        genetic_generation(pop, fitness, rng, allowed, keep=100)
        out["generation_seconds"] = time.perf_counter() - t
        out["peak_memory_gb"] = peak_memory_gb(device)
        return out
    if way == "toolkit":
        pair = load_model_pair(pipe, ckpt, model)
        eps_erased = lambda x, t, c: pair.eps("erased", x, t, c)  # noqa: E731
        eps_base = lambda x, t, c: pair.eps("base", x, t, c)  # noqa: E731
    else:  # the straightforward way: a second UNet holding the erased model
        erased_unet = copy.deepcopy(pipe.unet)
        load_checkpoint_into_unet(erased_unet, ckpt)
        eps_erased = lambda x, t, c: erased_unet(x, t, encoder_hidden_states=c, return_dict=False)[0]  # noqa: E731
        eps_base = lambda x, t, c: pipe.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]  # noqa: E731
    out["load_seconds"] = time.perf_counter() - t0
    ac = pipe.scheduler.alphas_cumprod.float()
    prompt = "a photo of a person on a beach"
    k = 5 if method == "unlearndiff" else 16
    layout = make_layout(tok, prompt, "prefix" if method == "unlearndiff" else "free", k)
    base_tokens = token_embedding_table(te)(layout.ids.to(device)[None])[0].detach()
    positions = layout.adv_positions.to(device)
    with torch.no_grad():
        E_prompt = te(tok(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device))[0]
    g = torch.Generator().manual_seed(0)
    if method == "unlearndiff":
        var = torch.full((k, len(allowed)), 1.0 / len(allowed), device=device, requires_grad=True)
    else:
        var = vocab[torch.randint(len(allowed), (k,), generator=g).to(device)].clone().requires_grad_(True)
    opt = torch.optim.Adam([var], lr=0.01, weight_decay=0.1)
    out["seconds"] = {}
    for size in sorted((int(s) for s in args.sizes.split(",")), reverse=False):
        x0 = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        t, tt = 500, torch.tensor([500], device=device)
        x_t = noised_latent(x0, noise, t, ac)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if method == "unlearndiff":
            adv = sample_one_hot(var, g) @ vocab
            cond = encode_token_embeddings(te, base_tokens.index_put((positions,), adv)[None])
            loss = unlearndiff_loss(eps_erased(x_t, tt, cond), noise)
            var.grad, = torch.autograd.grad(loss, [var])
            opt.step()
            with torch.no_grad():
                var.copy_(project_simplex(var))
        else:
            proj = vocab[nearest_tokens(var.detach(), vocab)].clone().requires_grad_(True)
            cond = encode_token_embeddings(te, base_tokens.index_put((positions,), proj)[None])
            with torch.no_grad():
                target = eps_base(x_t, tt, E_prompt)
            loss = p4d_loss(eps_erased(x_t, tt, cond), target)
            var.grad, = torch.autograd.grad(loss, [proj])
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out["seconds"][str(size)] = time.perf_counter() - start
    out["peak_memory_gb"] = peak_memory_gb(device)
    return out


def main(args):
    if args.child:
        print(json.dumps(child(args, *args.child)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s <= 0 or s % 8 for s in sizes):
        raise UserError(f"--sizes must be positive multiples of 8, got {args.sizes}")
    import torch

    from tiny import build_random_pipeline
    from utils.checkpoints import save_edited_weights
    from utils.models import read_cross_attention_weights

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        args.workdir = tmp.name
    folder = Path(args.workdir)
    if not (folder / "pipe" / "model_index.json").is_file():
        build_random_pipeline(folder / "pipe", args.preset, seed=0)
    if not (folder / "ckpt.safetensors").is_file():
        g = torch.Generator().manual_seed(1)
        W = read_cross_attention_weights(str(folder / "pipe"))
        save_edited_weights(folder / "ckpt.safetensors", {k: w + 0.01 * torch.randn(w.shape, generator=g)
                                                          for k, w in W.items()}, {"method": "benchmark"})
    results = []
    for method, way in [("unlearndiff", "toolkit"), ("unlearndiff", "two_unets"), ("p4d", "toolkit"),
                        ("p4d", "two_unets"), ("genetic", "toolkit")]:
        cmd = [sys.executable, __file__, "--child", method, way, "--workdir", str(folder), "--sizes", args.sizes,
               "--device", args.device, "--preset", args.preset] + (["--threads", str(args.threads)] if args.threads else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0:
            raise RuntimeError(f"{method}/{way} failed:\n{r.stderr[-2000:]}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{method} {way}: {results[-1]}", file=sys.stderr, flush=True)
    by = {(r["method"], r["way"]): r for r in results}
    summary = {"preset": args.preset, "device": args.device, "sizes": sizes, "threads": args.threads,
               "torch": torch.__version__, "measurements": results}
    for m in ("unlearndiff", "p4d"):
        summary[f"{m}_extra_memory_of_two_unets_gb"] = by[(m, "two_unets")]["peak_memory_gb"] - by[(m, "toolkit")]["peak_memory_gb"]
    summary["p4d_minus_unlearndiff_peak_memory_gb"] = by[("p4d", "toolkit")]["peak_memory_gb"] - \
        by[("unlearndiff", "toolkit")]["peak_memory_gb"]
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    run_cli(main, parse_args)
