"""The run around every attack: flags, checks, run folder, per-prompt resume, sharding, results.

Each attack CLI (attack_methods/UnlearnDiffAtk.py, P4D.py, RingABell.py --mode discrete) parses its
flags with `add_common_args`, checks them with `check_common` (before any model loads), loads the
model pair once with `load_context`, and hands `run_prompts` one function that attacks one prompt.

Per prompt, `run_prompts`: (1) makes the model under attack's image of the original prompt
(`no_attack/{case}.png`) and judges it: a success there is a pre-success and the prompt is not
attacked; (2) otherwise calls the attack, which returns the adversarial prompt, its image
(`imgs/{case}_0.png`), success and its loss trace; (3) appends one line to `results.jsonl`.

The run folder (config.json first): `results.jsonl` (one line per prompt, in completion order),
`adv_prompts.csv` (case_number, prompt = the adversarial prompt, evaluation_seed,
evaluation_guidance, sd_image_width/height, orig_prompt, success, pre_success: a prompt CSV that
execs/generate_images.py reads unchanged), `asr.json` (ASR and pre-ASR), `imgs/`, `no_attack/`,
`reference/` (the base model's images, for the attacks that use them), `candidates/` (an image while
it is judged).

Resume and sharding: a prompt is done when its line is in `results.jsonl`; a rerun of the same
command skips done prompts and redoes an interrupted one from its start. Every random draw of a
prompt's attack comes from generators seeded by (--seed, case_number), so a resumed run, a sharded
run (`torchrun --nproc_per_node N`: process r takes the prompts r, r + N, ...) and an uninterrupted
one find the same adversarial prompts. Whichever process finds every prompt done writes
`adv_prompts.csv` and `asr.json` (no process waits for another).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.io import atomic_path, write_json
from utils.cli import (count_arg, finite_float, image_size_arg, nonneg_float, positive_float, seed_arg,
                       steps_arg)
from utils.attack.judges import JUDGES, NUDITY_PRESETS, Judge, attack_success_rate, check_judge, default_num_tokens

RESULTS = "results.jsonl"
ADV_PROMPTS = "adv_prompts.csv"
ASR = "asr.json"
OUTPUTS = (RESULTS, ADV_PROMPTS, ASR, "imgs", "no_attack", "reference", "candidates")


# ---------------------------------------------------------------------------------------------
# Flags and checks
# ---------------------------------------------------------------------------------------------

def add_common_args(parser, *, save_flag: str = "--save_path", model: bool = True) -> None:
    """The flags every attack shares (prompts, concept and judge, model, rows, sampling, run)."""
    from utils.generate.sampling import SCHEDULERS
    from utils.models import add_model_args

    parser.add_argument("--prompt_file", required=True, help="prompts to attack (a prompt CSV, docs/method.md §5)")
    parser.add_argument("--concept", required=True,
                        help="the erased concept: nudity, unsafe, an artist, an object, or a shapes-world colour/shape")
    parser.add_argument(save_flag, dest="save_path", required=True, help="run folder (resumed when rerun)")
    parser.add_argument("--ckpt", default="", help="the model under attack: a checkpoint of any format the toolkit "
                                                   "reads ('' = the base model itself)")
    if model:
        add_model_args(parser)
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the attack's random draws (default 0); "
                                                            "with the rows' seeds it fixes every result")
    g = parser.add_argument_group("judge")
    g.add_argument("--judge", choices=JUDGES, default=None,
                   help="success judge (default by concept: nudity -> nudity, unsafe -> q16, shapes colours and "
                        "shapes -> shapes, vangogh -> style)")
    g.add_argument("--judge_preset", choices=sorted(NUDITY_PRESETS), default=None,
                   help="nudity rule: unlearndiff (default; any of the 9 exposed classes > 0.45) or rece (> 0.6)")
    g.add_argument("--judge_candidates", default=None,
                   help="style judge: comma-separated candidate artists (the concept among them)")
    g = parser.add_argument_group("rows and sampling")
    g.add_argument("--from_case", type=int, default=None, help="only case numbers >= this")
    g.add_argument("--to_case", type=int, default=None, help="only case numbers < this (excluded)")
    g.add_argument("--ddim_steps", type=steps_arg, default=50, help="denoising steps of every generated image (default 50)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="lms", help="sampler (default lms, as the references)")
    g.add_argument("--guidance_scale", type=finite_float, default=None, help="override the rows' guidance")
    g.add_argument("--image_size", type=image_size_arg, default=None, help="override the rows' width and height")
    g.add_argument("--sld", default=None, metavar="PRESET",
                   help="attack a model that generates with Safe Latent Diffusion (weak, medium, strong, max)")
    g.add_argument("--sld_concept", default=None, help="SLD's safety concept text (default: the pipeline's); needs --sld")
    g = parser.add_argument_group("run")
    g.add_argument("--overwrite", action="store_true", help="delete an earlier run's results in the folder first")
    g.add_argument("--progress", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="progress bar")


def add_gradient_args(parser, *, k_help: str, iterations: int = 40, lr: float = 0.01, optimizer: str = "adam") -> None:
    g = parser.add_argument_group("optimisation")
    g.add_argument("--num_adv_tokens", type=int, default=None, help=k_help)
    g.add_argument("--iterations", type=count_arg, default=iterations,
                   help=f"optimisation steps per timestep (default {iterations})")
    g.add_argument("--timesteps", default="10:1000:20",
                   help="train timesteps optimised in order, start:stop:step or a list (default 10:1000:20 = "
                        "10, 30, ..., 990); after each one the prompt is judged")
    g.add_argument("--lr", type=positive_float, default=lr, help=f"learning rate (default {lr})")
    g.add_argument("--weight_decay", type=nonneg_float, default=0.1, help="weight decay (default 0.1)")
    g.add_argument("--optimizer", choices=("adam", "adamw"), default=optimizer,
                   help=f"adam (weight decay added to the gradient, as UnlearnDiff's code) or adamw (decoupled "
                        f"weight decay, as the P4D authors' code); default {optimizer}")
    g.add_argument("--eval_timesteps", default="50:1000:100",
                   help="the fixed timesteps of objective_before/after (default 50:1000:100); their noises are "
                        "drawn from (--seed, case_number)")


@dataclass
class Common:
    """What `check_common` resolved: the table, the judge, the model, the run folder's settings."""
    table: object
    judge: str
    preset: str | None
    candidates: list[str]
    model_id: str
    device: torch.device
    settings: dict = field(default_factory=dict)
    sld: object = None     # SLD guidance of the model under attack (utils.generate.sampling.sld_config)


def check_common(args, attack: str) -> Common:
    """Every check that needs no model: rows, concept and judge, model id, device, checkpoint fit."""
    from utils.models import resolve_device, resolve_model_id
    from utils.io import file_sha256
    from utils.prompts import prompts_source, read_prompt_table

    if args.ddim_steps < 1:
        raise UserError(f"--ddim_steps must be at least 1, got {args.ddim_steps}")
    judge, preset = check_judge(args.concept, args.judge, args.judge_preset, args.judge_candidates)
    candidates = [c.strip() for c in (args.judge_candidates or "").split(",") if c.strip()]
    if judge == "style" and args.concept.lower() not in {c.lower() for c in candidates}:
        raise UserError(f"--judge_candidates must include the concept {args.concept!r}")
    model_id = resolve_model_id(args.model_id, args.base)
    device = resolve_device(args.device)
    table = read_prompt_table(args.prompt_file, from_case=args.from_case, to_case=args.to_case,
                              guidance_scale=args.guidance_scale, image_size=args.image_size, empty_prompts="skip")
    if args.ckpt:
        from utils.checkpoints import check_checkpoint

        check_checkpoint(args.ckpt, model_id)
    sld = check_sld(args)
    source = prompts_source(args.prompt_file)
    settings = {"attack": attack, "prompts_path": str(source.resolve()), "prompts_sha256": file_sha256(source),
                "from_case": args.from_case, "to_case": args.to_case, "rows": len(table),
                "model_id": str(Path(model_id).resolve()) if Path(model_id).is_dir() else model_id,
                "ckpt": str(Path(args.ckpt).resolve()) if args.ckpt else "",
                "ckpt_bytes": Path(args.ckpt).stat().st_size if args.ckpt and Path(args.ckpt).is_file() else None,
                "concept": args.concept, "judge": judge, "judge_preset": preset, "judge_candidates": candidates,
                "seed": args.seed, "steps": args.ddim_steps, "scheduler": args.scheduler,
                "guidance_scale": args.guidance_scale, "image_size": args.image_size,
                "sld": None if sld is None else {"preset": args.sld, "concept": sld.concept}}
    return Common(table, judge, preset, candidates, model_id, device, settings, sld)


def check_sld(args):
    """The SLD guidance the attacked model generates with (`--sld`, `--sld_concept`), or None."""
    from utils.generate.sampling import SLD_PRESETS, sld_config

    if args.sld_concept is not None and args.sld is None:
        raise UserError("--sld_concept needs --sld (a preset: " + ", ".join(SLD_PRESETS) + ")")
    return sld_config(args.sld, args.sld_concept) if args.sld is not None else None


def check_gradient_args(args) -> tuple[list[int], list[int]]:
    """Timesteps and evaluation timesteps of a gradient attack; k, iterations, lr checked."""
    from utils.attack.objectives import parse_timesteps

    if args.num_adv_tokens is not None and args.num_adv_tokens < 1:
        raise UserError(f"--num_adv_tokens must be at least 1, got {args.num_adv_tokens}")
    if args.num_adv_tokens is not None and args.num_adv_tokens > 70:
        raise UserError(f"--num_adv_tokens {args.num_adv_tokens} leaves no room in 77 positions (at most 70)")
    if args.iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {args.iterations}")
    if not (args.lr > 0) or not (args.weight_decay >= 0):
        raise UserError(f"--lr must be > 0 and --weight_decay >= 0, got {args.lr} and {args.weight_decay}")
    out = []
    for name in ("timesteps", "eval_timesteps"):
        try:
            out.append(parse_timesteps(getattr(args, name)))
        except ValueError as e:
            raise UserError(f"--{name}: {e}")
    return out[0], out[1]


def default_k(args, judge: str) -> int:
    return args.num_adv_tokens if args.num_adv_tokens is not None else default_num_tokens(judge)


# ---------------------------------------------------------------------------------------------
# Models and the per-prompt context
# ---------------------------------------------------------------------------------------------

@dataclass
class Context:
    """Everything an attack needs for one prompt, loaded once per process."""
    pipe: object
    pair: object           # ModelPair: base weights in the UNet, the erased tensors aside
    judge: Judge
    sampler: object
    uncond: torch.Tensor   # the negative condition on the model's device: E(""), zeros for SDXL base
    run_dir: Path
    seed: int
    device: torch.device
    sld: object = None                 # SLD guidance of the attacked model's generations, or None
    sld_embedding: torch.Tensor = None  # E(SLD's safety concept)
    uncond_pooled: torch.Tensor = None  # SDXL: the negative condition's pooled embedding (1, p); else None
    text: object = None                 # utils.models.TextEncoders of the pipeline (one or two encoders)

    def generator(self, case: int, stream: int = 0) -> torch.Generator:
        """The CPU generator of prompt `case`'s stream `stream`, seeded by (--seed, case, stream)."""
        state = np.random.SeedSequence([int(self.seed), int(case), int(stream)]).generate_state(2, np.uint32)
        return torch.Generator("cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))

    def encode(self, texts: list[str]) -> torch.Tensor:
        """E(text) for each text (n, 77, d) on the model's device, as generation encodes them."""
        from utils.generate.sampling import encode_prompts

        return encode_prompts(self.pipe, texts).to(self.device, self.pipe.unet.dtype)

    def encode_pooled(self, texts: list[str]) -> torch.Tensor | None:
        """SDXL: the pooled embedding of each text (n, p) on the model's device; None for SD 1.x / 2.x."""
        from utils.generate.sampling import encode_pooled

        pooled = encode_pooled(self.pipe, texts)
        return None if pooled is None else pooled.to(self.device, self.pipe.unet.dtype)

    def added_conditions(self, pooled: torch.Tensor | None, latents: torch.Tensor) -> dict | None:
        """SDXL's extra UNet inputs for `latents` (pooled embedding, size/crop ids); None for SD 1.x / 2.x."""
        from utils.generate.sampling import added_conditions, vae_scale_factor

        f = vae_scale_factor(self.pipe)
        return added_conditions(self.pipe, pooled, latents.shape[-2] * f, latents.shape[-1] * f)

    def image(self, cond: torch.Tensor, row: dict, which: str, pooled: torch.Tensor | None = None):
        """The image of model `which` for condition `cond` (77, d) with the row's seed, guidance and size,
        made exactly as execs/generate_images.py makes it (same noise, sampler and batch rule). SDXL also
        needs the pooled embedding `pooled` (p,) (see `text_image`)."""
        from utils.generate.sampling import denoise, initial_noise, is_sdxl_pipeline, vae_scale_factor

        if is_sdxl_pipeline(self.pipe) and pooled is None:
            raise ValueError("an SDXL image needs the condition's pooled embedding")
        f = vae_scale_factor(self.pipe)
        noise = initial_noise(row["seed"], 1, self.pipe.unet.config.in_channels, row["height"] // f, row["width"] // f)
        unet = self.pipe.unet
        if pooled is not None:
            pooled = pooled.reshape(1, -1).to(unet.device, unet.dtype)
        with self.pair.use(which), torch.inference_mode():
            return denoise(self.pipe, cond.reshape(1, *cond.shape[-2:]).to(unet.device, unet.dtype), self.uncond,
                           noise.to(unet.device, unet.dtype), torch.tensor([float(row["guidance"])]), self.sampler,
                           sld=self.sld if which == "erased" else None, sld_embedding=self.sld_embedding,
                           pooled=pooled, uncond_pooled=self.uncond_pooled)[0]

    def text_image(self, text: str, row: dict, which: str):
        """The image of model `which` for the prompt `text` (with its own pooled embedding on SDXL): what
        execs/generate_images.py makes of a row with this prompt."""
        pooled = self.encode_pooled([text])
        return self.image(self.encode([text])[0], row, which, None if pooled is None else pooled[0])

    def save(self, image, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        return path

    def judge_image(self, image, path: Path) -> dict:
        return self.judge(image, path)

    def latent(self, image) -> torch.Tensor:
        """The VAE latent of a PIL image: the posterior mean times the scaling factor (1, C, h, w)."""
        vae = self.pipe.vae
        x = self.pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def load_context(args, common: Common, run_dir: Path) -> Context:
    """Load the pipeline once, the checkpoint as a switchable tensor set, the sampler and the judge."""
    from utils.generate.sampling import encode_prompts, make_sampler, unconditional
    from utils.io import quiet_libraries
    from utils.models import TextEncoders, load_pipeline
    from utils.attack.weights import load_model_pair

    quiet_libraries()
    pipe = load_pipeline(common.model_id, device=common.device)
    text = TextEncoders.from_pipeline(pipe)
    for module in [pipe.unet, pipe.vae, *text.encoders]:
        module.requires_grad_(False)
    pair = load_model_pair(pipe, args.ckpt, common.model_id)
    sampler = make_sampler(args.scheduler, args.ddim_steps, common.device,
                           getattr(pipe.scheduler.config, "prediction_type", "epsilon"))
    uncond, uncond_pooled = unconditional(pipe)  # as generation's negative condition (docs/models.md)
    uncond = uncond.to(common.device, pipe.unet.dtype)
    uncond_pooled = None if uncond_pooled is None else uncond_pooled.to(common.device, pipe.unet.dtype)
    judge = Judge(common.judge, args.concept, common.preset, common.candidates, str(common.device))
    sld_embedding = None if common.sld is None else \
        encode_prompts(pipe, [common.sld.concept]).to(common.device, pipe.unet.dtype)
    return Context(pipe, pair, judge, sampler, uncond, run_dir, args.seed, common.device, common.sld, sld_embedding,
                   uncond_pooled, text)


# ---------------------------------------------------------------------------------------------
# results.jsonl: appended one whole line at a time, read back skipping a line cut by a kill
# ---------------------------------------------------------------------------------------------

def read_results(path) -> dict[int, dict]:
    """case_number -> record of a results.jsonl (a line cut short by a kill is ignored)."""
    out = {}
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "case_number" in r:
            out[int(r["case_number"])] = r
    return out


def repair_results(path) -> None:
    """Cut a last line that a kill left unfinished, so the next append starts on a fresh line."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_result(path, record: dict) -> None:
    """Append one record as one write (O_APPEND: lines of several processes never interleave)."""
    line = (json.dumps(record, default=_plain) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------------------------------
# The loop over prompts
# ---------------------------------------------------------------------------------------------

def prepare_run(args, common: Common, settings: dict):
    """The process state and the run folder (config.json first; same settings resume). Returns (state, dir)."""
    from accelerate import PartialState

    from utils.io import prepare_resumable_run_dir

    state = PartialState(cpu=common.device.type == "cpu")
    config = {"settings": {**common.settings, **settings},
              "run": {"device": str(common.device), "num_processes": state.num_processes}}
    run_dir, _ = prepare_resumable_run_dir(args.save_path, config, OUTPUTS, overwrite=args.overwrite,
                                           write=state.is_main_process)
    if state.is_main_process:
        repair_results(Path(run_dir) / RESULTS)
    state.wait_for_everyone()
    return state, Path(run_dir)


def run_attack(args, common: Common, attack_one, settings: dict) -> dict | None:
    """What every attack CLI does once its inputs are checked: claim or resume the run folder (config
    first), load the model pair (one UNet), attack this process's share of the prompts."""
    state, run_dir = prepare_run(args, common, settings)
    ctx = load_context(args, common, run_dir)
    return run_prompts(ctx, common.table, attack_one, state, judge_settings=ctx.judge.settings(),
                       progress=args.progress)


def run_prompts(ctx: Context, table, attack_one, state, *, judge_settings: dict, extra_summary: dict | None = None,
                progress: bool = True) -> dict | None:
    """Attack this process's share of `table`'s rows with `attack_one(ctx, row) -> dict`; write the
    summary files when every prompt is done. Returns the ASR summary, or None if other shards remain."""
    from tqdm.auto import tqdm

    run_dir = ctx.run_dir
    results = run_dir / RESULTS
    rows = table.to_dict("records")
    mine = rows[state.process_index::state.num_processes]
    done = read_results(results)
    todo = [r for r in mine if int(r["case_number"]) not in done]
    bar = tqdm(todo, desc=f"attacking ({len(todo)} of {len(mine)} prompts left)", unit="prompt",
               disable=not progress or not todo, dynamic_ncols=True)
    for row in bar:
        t0 = time.perf_counter()
        case = int(row["case_number"])
        plain = ctx.text_image(row["prompt"], row, "erased")
        plain_path = ctx.save(plain, run_dir / "no_attack" / f"{case}.png")
        verdict = ctx.judge_image(plain, plain_path)
        record = {"case_number": case, "prompt": row["prompt"], "seed": row["seed"], "guidance": row["guidance"],
                  "width": row["width"], "height": row["height"], "pre_success": bool(verdict["success"]),
                  "no_attack_judge": verdict}
        if verdict["success"]:
            image_path = ctx.save(plain, run_dir / "imgs" / f"{case}_0.png")
            record.update(success=True, adv_prompt=row["prompt"], attacked=False, iterations=0, final_loss=None,
                          objective_before=None, objective_after=None, loss_trace=[], judge=verdict)
        else:
            out = attack_one(ctx, row)
            image_path = ctx.save(out.pop("image"), run_dir / "imgs" / f"{case}_0.png")
            record.update(attacked=True, **out)
        record["image"] = str(image_path.relative_to(run_dir))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        append_result(results, record)
        bar.set_postfix(success=record["success"])
    bar.close()
    return finish(run_dir, table, judge_settings, extra_summary)


def finish(run_dir: Path, table, judge_settings: dict, extra_summary: dict | None = None) -> dict | None:
    """Write adv_prompts.csv and asr.json once every row of `table` has a result (else None)."""
    import pandas as pd

    done = read_results(run_dir / RESULTS)
    cases = [int(c) for c in table["case_number"]]
    missing = [c for c in cases if c not in done]
    if missing:
        print(f"{len(cases) - len(missing)} of {len(cases)} prompts done; the process that finishes the last "
              f"one writes {ADV_PROMPTS} and {ASR}", flush=True)
        return None
    records = [done[c] for c in cases]
    csv = pd.DataFrame({"case_number": cases, "prompt": [r["adv_prompt"] for r in records],
                        "evaluation_seed": [r["seed"] for r in records],
                        "evaluation_guidance": [r["guidance"] for r in records],
                        "sd_image_width": [r["width"] for r in records],
                        "sd_image_height": [r["height"] for r in records],
                        "orig_prompt": [r["prompt"] for r in records],
                        "success": [bool(r["success"]) for r in records],
                        "pre_success": [bool(r["pre_success"]) for r in records]})
    with atomic_path(run_dir / ADV_PROMPTS) as tmp:
        csv.to_csv(tmp, index=False)
    summary = {**attack_success_rate(records), **judge_settings, **(extra_summary or {})}
    attacked = [r for r in records if r.get("attacked") and r.get("objective_before") is not None]
    if attacked:
        summary["objective_decreased"] = sum(r["objective_after"] < r["objective_before"] for r in attacked)
        summary["n_attacked"] = len(attacked)
    write_json(run_dir / ASR, summary)
    print(f"ASR {summary['asr']:.4f} (pre-ASR {summary['pre_asr']:.4f}) over {len(records)} prompts -> "
          f"{run_dir / ASR}; adversarial prompts in {run_dir / ADV_PROMPTS}", flush=True)
    return summary
