"""Speed and memory of the closed-form erasure on Stable Diffusion 1.4's and SDXL's exact shapes.

    python benchmarks/erase_speed.py            # nudity: UCE + 3 RECE epochs, ours vs straightforward
    python benchmarks/erase_speed.py --art      # also one artist with the 1,733 others preserved, cold and warm cache
    python benchmarks/erase_speed.py --preset sdxl --skip_naive   # SDXL's shapes: UCE + 3 RECE epochs, memory

Builds (once, cached in benchmarks/cache/<preset>) a pipeline with the preset's shapes and random
weights, offline (SDXL: text encoders at full size, the UNet as a sparse file holding random edited
matrices, `tests/tiny.py::build_edit_model`; editing never loads the UNet). Every toolkit run uses a
Gram cache private to this benchmark run (docs/models.md), first cold, then warm. Measures, in one run:
- ours: `execs/train_uce.py` and `train.py --skip_validation` as subprocesses, their own
  closed_form_seconds (derivation + edits + materialising the matrices), weights_gram_seconds (the
  fp64 pass over the weights, or reading it from the cache), text_encoding_seconds, the cache's
  status, the peak RSS of the whole process, and the edited-weights file size;
- the straightforward way, in this process: two full pipelines in memory (original and edited), and
  for every layer the text embeddings and targets recomputed inside the layer loop, explicit inverses,
  RECE's sums accumulated layer by layer -- the shape of the authors' released code.
Prints one JSON object (also written to benchmarks/results/erase_speed.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.models import CROSS_ATTN_KEY, quiet_libraries  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["sd14", "sdxl"], default="sd14", help="model shapes (default sd14)")
    p.add_argument("--cache", default=None, help="pipeline folder (default benchmarks/cache/<preset>)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder")
    p.add_argument("--art", action="store_true", help="also erase one artist preserving the 1,733 others")
    p.add_argument("--skip_naive", action="store_true", help="only measure the toolkit")
    p.add_argument("--naive_preserve_layers", type=int, default=1,
                   help="art baseline: layers actually run before extrapolating to all 32")
    return p.parse_args(argv)


def ensure_model(folder: Path, preset: str = "sd14") -> Path:
    if not (folder / "model_index.json").exists():
        from tests.tiny import build_edit_model, build_random_pipeline
        print(f"building a {preset}-shaped pipeline with random weights in {folder} ...", file=sys.stderr)
        if preset == "sdxl":
            build_edit_model(folder, "sdxl", seed=0)
        else:
            build_random_pipeline(folder, preset, seed=0)
    return folder


def timing_of(folder: Path, wall: float, rss: int, cpu: float) -> dict:
    t = json.loads((folder / "timing.json").read_text())
    keep = ("closed_form_seconds", "derive_and_edit_seconds", "materialise_seconds", "weights_gram_seconds",
            "text_encoding_seconds", "load_seconds", "closed_form_cpu_seconds", "derive_and_edit_cpu_seconds",
            "materialise_cpu_seconds", "weights_gram_cpu_seconds", "text_encoding_cpu_seconds", "threads", "cache",
            "texts_encoded")
    return {**{k: t[k] for k in keep if k in t}, "process_wall_seconds": wall, "process_cpu_seconds": cpu,
            "peak_rss_bytes": rss}


def sdxl(args, model: Path, runs: Path) -> dict:
    """SDXL's shapes: UCE + 3 RECE epochs in one train.py process, cold then warm cache; memory budget."""
    from safetensors import safe_open

    from utils.models import read_cross_attention_weights

    enc_bytes = 0
    for sub in ("text_encoder", "text_encoder_2"):
        for f in (model / sub).glob("*.safetensors"):
            with safe_open(str(f), framework="pt") as h:
                enc_bytes += sum(4 * math.prod(h.get_slice(k).get_shape()) for k in h.keys())
    W = read_cross_attention_weights(str(model))
    edited_bytes = sum(4 * w.numel() for w in W.values())
    res = {"model": "SDXL base 1.0 shapes, random weights (UNet file sparse: only the edited matrices random)",
           "edited_matrices": len(W), "edited_parameters": edited_bytes // 4, "text_encoders_fp32_bytes": enc_bytes,
           "memory_budget_bytes": enc_bytes + edited_bytes + 2 ** 30, "threads": torch.get_num_threads(), "ours": {}}
    del W
    cmd = ["train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "3", "--regular_scale", "0.1",
           "--model_id", str(model), "--device", "cpu", "--skip_validation", "--cache_dir", str(runs / "gram_cache")]
    for name in ("cold_cache", "warm_cache"):
        wall, rss, cpu = run_measured(cmd + ["--save_path", str(runs / f"sdxl_{name}")])
        res["ours"][f"uce_plus_rece_3_epochs_{name}"] = timing_of(runs / f"sdxl_{name}", wall, rss, cpu)
    res["peak_rss_within_budget"] = max(r["peak_rss_bytes"] for r in res["ours"].values()) <= res["memory_budget_bytes"]
    return res


def run_measured(args: list[str]) -> tuple[float, int, float]:
    """Run a CLI in a fresh process; return (wall seconds, peak RSS in bytes, CPU seconds of all its threads)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(u.ru_utime + u.ru_stime, u.ru_maxrss); sys.exit(r.returncode)")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-2000:]}")
    cpu, rss = proc.stdout.strip().splitlines()[-1].split()
    return wall, int(rss) * 1024, float(cpu)


# ------------------------------------------------------------------ the straightforward way

@torch.no_grad()
def embed(pipe, text):
    ids = pipe.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return pipe.text_encoder(ids.input_ids)[0][0], int(ids.attention_mask.sum()) - 2


def layers(unet):
    return [m for n, m in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]


@torch.no_grad()
def naive_edit(pipe, edit_unet, erase, preserve, lamb, s_e, s_p, uce_slice, layer_limit=None):
    """Per layer: embed every text again, compute the targets, invert the right factor."""
    for i, lin_e in enumerate(layers(edit_unet)):
        if layer_limit is not None and i >= layer_limit:
            break
        W0 = lin_e.weight.clone()
        d = W0.shape[1]
        mat1 = lamb * W0
        mat2 = lamb * torch.eye(d)
        for concept, guide in erase:
            if uce_slice:
                (o, fo), (n, fn) = embed(pipe, concept), embed(pipe, guide)
                F = max(fo, fn)
                C, T = o[fo:77 - max(0, F - fo)], n[fn:77 - max(0, F - fn)]
            else:
                C, T = concept, embed(pipe, guide)[0]
            V = T @ W0.T
            mat1 += s_e * V.T @ C
            mat2 += s_e * C.T @ C
        for p in preserve:
            Cp = embed(pipe, p)[0]
            mat1 += s_p * (Cp @ W0.T).T @ Cp
            mat2 += s_p * Cp.T @ Cp
        # fp64 for the inverse so that the comparison of weights measures the method, not fp32 rounding
        lin_e.weight.copy_((mat1.double() @ torch.inverse(mat2.double())).float())


@torch.no_grad()
def naive_adversarial(pipe, unet_cur, unet_orig, concept, gamma):
    e = embed(pipe, concept)[0]
    d = e.shape[1]
    S1, S2 = torch.zeros(d, d), torch.zeros(d, d)
    for a, b in zip(layers(unet_cur), layers(unet_orig)):
        S1 += a.weight.T @ a.weight
        S2 += a.weight.T @ b.weight
    S1, S2 = S1.double(), S2.double()
    return (torch.inverse(S1 + gamma * torch.eye(d, dtype=torch.float64)) @ S2 @ e.double().T).T.float()


def naive_nudity(model: Path, epochs: int = 3) -> dict:
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)  # the original model
    edited = copy.deepcopy(pipe.unet)  # the second full model
    t = time.perf_counter()
    naive_edit(pipe, edited, [("nudity", " ")], [""], 0.5, 1.0, 1.0, uce_slice=True)
    t_uce = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(epochs):
        c = naive_adversarial(pipe, edited, pipe.unet, "nudity", 0.1)
        naive_edit(pipe, edited, [(c, " ")], [" "], 0.1, 1.0, 0.1, uce_slice=False)
    t_rece = time.perf_counter() - t
    weights = {k: v.clone() for k, v in edited.state_dict().items() if CROSS_ATTN_KEY.search(k)}
    return {"uce_seconds": t_uce, "rece_3_epochs_seconds": t_rece,
            "peak_rss_bytes_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, weights


def main(args):
    quiet_libraries()
    model = ensure_model(Path(args.cache or REPO / "benchmarks" / "cache" / args.preset), args.preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / f"runs-{os.getpid()}"
    if args.preset == "sdxl":
        res = sdxl(args, model, runs)
        (out / "erase_speed_sdxl.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    res = {"model": "SD 1.4 shapes, random weights", "threads": torch.get_num_threads(), "ours": {}, "straightforward": {}}
    cache = ["--cache_dir", str(runs / "gram_cache")]

    # 1. ours: UCE, then RECE 3 epochs from the UCE checkpoint (cold, then warm cache), then the whole
    #    train.py from scratch
    wall, rss, cpu = run_measured(["execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity",
                              "--model_id", str(model), "--device", "cpu", "--save_path", str(runs / "uce")] + cache)
    res["ours"]["uce"] = timing_of(runs / "uce", wall, rss, cpu)
    for name in ("rece_3_epochs", "rece_3_epochs_warm_cache"):
        wall, rss, cpu = run_measured(["train.py", "--concepts", "nudity", "--concept_type", "nudity", "--emb_computing",
                                  "close_regzero", "--regular_scale", "0.1", "--epochs", "3", "--target_ckpt",
                                  str(runs / "uce" / "uce.safetensors"), "--model_id", str(model), "--device", "cpu",
                                  "--save_path", str(runs / name), "--skip_validation"] + cache)
        res["ours"][name] = {**timing_of(runs / name, wall, rss, cpu),
                             "edited_weights_file_bytes": (runs / name / "epoch_3.safetensors").stat().st_size}
    wall, rss, cpu = run_measured(["train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "3",
                              "--model_id", str(model), "--device", "cpu", "--save_path", str(runs / "rece_full"),
                              "--skip_validation"] + cache)
    res["ours"]["uce_plus_rece_3_epochs_one_process"] = timing_of(runs / "rece_full", wall, rss, cpu)

    # 2. the straightforward way, same steps
    if not args.skip_naive:
        naive, W_naive = naive_nudity(model)
        res["straightforward"]["nudity"] = naive
        from safetensors.torch import load_file
        ours = load_file(str(runs / "rece_full" / "epoch_3.safetensors"))
        res["max_relative_difference_of_weights"] = max(
            float((ours[k] - W_naive[k]).abs().max() / W_naive[k].abs().max()) for k in ours)
        res["speedup_uce"] = naive["uce_seconds"] / res["ours"]["uce"]["closed_form_seconds"]
        res["speedup_rece_3_epochs"] = naive["rece_3_epochs_seconds"] / res["ours"]["rece_3_epochs"]["closed_form_seconds"]

    # 3. art: one artist, the 1,733 others preserved (docs/method.md §2a), UCE + 1 RECE epoch, end to end,
    #    with a cold and then a warm Gram cache (the second run skips the 1,733 encodings and the weight pass)
    if args.art:
        for name in ("art_uce_plus_rece_1_epoch", "art_uce_plus_rece_1_epoch_warm_cache"):
            wall, rss, cpu = run_measured(["train.py", "--concepts", "Kelly McKernan", "--concept_type", "art",
                                      "--model_id", str(model), "--device", "cpu", "--save_path", str(runs / name),
                                      "--skip_validation"] + cache)
            res["ours"][name] = timing_of(runs / name, wall, rss, cpu)
        if not args.skip_naive:
            from diffusers import StableDiffusionPipeline
            from utils.erase.concepts import all_artists
            pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
            edited = copy.deepcopy(pipe.unet)
            preserve = [""] + [a for a in all_artists() if a.lower() != "kelly mckernan"]
            t0 = time.perf_counter()
            naive_edit(pipe, edited, [("Kelly McKernan", "art")], preserve, 0.5, 1.0, 0.1, True,
                       layer_limit=args.naive_preserve_layers)
            per_layer = (time.perf_counter() - t0) / args.naive_preserve_layers
            res["straightforward"]["art_uce_estimated_seconds"] = per_layer * len(layers(edited))
            res["straightforward"]["art_note"] = (f"measured {args.naive_preserve_layers} of {len(layers(edited))} "
                                                  f"layers, extrapolated linearly")
    res["peak_rss_bytes_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (out / "erase_speed.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(parse_args())
