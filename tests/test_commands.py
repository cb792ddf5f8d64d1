"""Every command in the README and in scripts/*.sh is accepted by the parser of the script it runs."""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def commands():
    """(source, argv) for each `python X.py ...` line of the README's code blocks and the scripts."""
    found = []
    sources = [REPO / "README.md"] + sorted((REPO / "scripts").glob("*.sh"))
    for src in sources:
        if not src.exists():
            continue
        text = src.read_text()
        if src.suffix == ".md":
            text = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S))
        text = text.replace("\\\n", " ")
        # shell variables take the defaults the script gives them (VAR=${VAR:-default}), else a placeholder
        defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", text, flags=re.M))
        for line in text.splitlines():
            line = line.strip()
            m = re.search(r"(?:^|&&\s*|\s)(?:python3?|torchrun(?:\s+--\S+)*|accelerate launch(?:\s+--\S+)*)\s+"
                          r"(\S+\.py)\s*(.*)$", line)
            if not m or line.startswith("#"):
                continue
            rest = re.split(r"\s(?:&&|\|\||;|\|)\s", m.group(2))[0]
            rest = re.sub(r'"?\$\{\w+\[@\]\}"?', "", rest)  # a bash array of flags the script builds: unknown here
            rest = re.sub(r"\$\{?(\w+)(:-[^}]*)?\}?", lambda v: defaults.get(v.group(1), "X"), rest)
            rest = re.sub(r"\s?[0-9]*>.*$", "", rest)          # redirections
            found.append((f"{src.name}: {line[:80]}", m.group(1), shlex.split(rest)))
    return found


def load(script: str):
    path = REPO / script
    spec = importlib.util.spec_from_file_location(f"cli_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CMDS = commands()


def test_there_are_commands():
    assert any("README" in c[0] for c in CMDS)
    assert sum("sh:" in c[0] for c in CMDS) >= 10


@pytest.mark.parametrize("where,script,argv", CMDS, ids=[c[0] for c in CMDS])
def test_command_parses(where, script, argv):
    if script.startswith("-"):
        pytest.skip("module invocation")
    assert (REPO / script).is_file(), f"{where}: {script} does not exist"
    mod = load(script)
    mod.parse_args(argv)  # argparse exits (SystemExit 2) on a flag it does not know


# ---------------------------------------------------------------------------------------------
# The commands run: README's in order, and every CLI docstring's example as one chain, on a tiny
# random pipeline, a few rows of each dataset (a workspace whose dataset/ holds the small copies)
# and tiny offline scorers. Budget flags are appended where the command does not set them:
# --model_id <tiny> (generation and erasure CLIs), --ddim_steps 2, --image_size 16, --device cpu, and for train.py's
# validation the concept type's default CSV from the workspace's dataset/.
# ---------------------------------------------------------------------------------------------

CLI_FILES = ["train.py", "compute_nudity_rate.py", "attack_methods/RingABell.py", "dataset/fetch.py"] + \
    sorted(str(p.relative_to(REPO)) for d in ("execs", "benchmarks") for p in (REPO / d).glob("*.py"))
MODEL_CLIS = {"train.py", "execs/train_uce.py", "execs/generate_images.py", "attack_methods/RingABell.py",
              "execs/adversarial_rates.py", "attack_methods/UnlearnDiffAtk.py", "attack_methods/P4D.py"}
# Docstring commands not run here, and why (each is run elsewhere or needs a large model).
NOT_RUN = {
    "execs/train_shapes_model.py": "trains the shipped shapes model (41 min); tests/test_shapes.py trains a small one",
    "execs/shapes_table.py": "needs the demo's runs; tests/test_demo.py runs scripts/demo.sh, which calls it",
    "execs/robustness_table.py": "needs scripts/robustness.sh's runs; tests/test_robustness.py runs the script, "
                                 "which calls it",
    "benchmarks/erase_speed.py": "builds SD 1.4-sized models (GBs of memory): a benchmark, not a test",
    "benchmarks/generation_speed.py": "a benchmark (timings), not a test",
    "benchmarks/nudity_speed.py": "a benchmark (timings), not a test",
    "benchmarks/attack_speed.py": "builds SD 1.4-sized models (GBs of memory): a benchmark, not a test",
    "benchmarks/gpu.py": "runs every benchmark (its --small CPU dry run builds several models): not a test",
}
# Runs the docstring commands read that are no docstring's example, by the name of their folder.
SETUP = {name: ["execs/generate_images.py", "--prompts_path", f"dataset/{csv}", "--save_path", f"runs/{name}", *extra]
         for name, csv, extra in [
             ("coco-sd", "coco_30k.csv", ["--concept", "coco"]),
             ("big-artists-sd", "big_artist_prompts.csv", []),
             ("big-artists-rece", "big_artist_prompts.csv", ["--ckpt", "runs/rece-nudity/best.safetensors"]),
             ("imagenette-rece", "imagenette.csv", ["--ckpt", "runs/rece-nudity/best.safetensors"]),
             ("i2p-sd", "i2p.csv", ["--concept", "nudity"]),
             ("i2p-rece", "i2p.csv", ["--concept", "nudity", "--ckpt", "runs/rece-nudity/best.safetensors"])]}
DOC_ORDER = ["dataset/fetch.py", "execs/train_uce.py", "train.py", "execs/generate_images.py", "coco-sd",
             "execs/compute_clip_score.py", "execs/compute_fid.py", "big-artists-sd", "big-artists-rece",
             "execs/compute_lpips.py", "execs/classify_artists.py", "imagenette-rece", "execs/classify_objects.py",
             "i2p-sd", "i2p-rece", "compute_nudity_rate.py", "execs/compute_q16.py", "execs/results_table.py",
             "attack_methods/RingABell.py", "execs/adversarial_rates.py", "execs/shapes_data.py",
             "execs/train_esd.py"]


def docstring_commands() -> dict[str, list[list[str]]]:
    """{script: [argv, ...]} for each `python SCRIPT ...` line of a CLI's module docstring."""
    import ast

    found = {}
    for rel in CLI_FILES:
        doc = ast.get_docstring(ast.parse((REPO / rel).read_text())) or ""
        for line in doc.replace("\\\n", " ").splitlines():
            m = re.match(r"\s*python3? (\S+\.py)(.*)$", line)
            if m:
                assert m.group(1) == rel, f"{rel}'s docstring runs {m.group(1)}"
                found.setdefault(rel, []).append(shlex.split(m.group(2).split("  #")[0]))
    return found


def budget_flags(script: str, argv: list[str], tiny: Path) -> list[str]:
    ns = vars(load(script).parse_args(argv))
    extra = []
    if script in MODEL_CLIS and "--model_id" not in argv and "--base" not in argv:
        extra += ["--model_id", str(tiny)]
    if "ddim_steps" in ns and "--ddim_steps" not in argv:
        extra += ["--ddim_steps", "2"]
    if ns.get("image_size", 0) is None:
        extra += ["--image_size", "16"]
    if "device" in ns and "--device" not in argv:
        extra += ["--device", "cpu"]
    # training and attack budgets: a few steps of each (the commands' own settings are the paper's)
    if script == "execs/train_esd.py" and "--iterations" not in argv:
        extra += ["--iterations", "2"]
    if script.startswith("attack_methods/") and "iterations" in ns and "--iterations" not in argv:
        extra += ["--iterations", "1", "--timesteps", "500", "--eval_timesteps", "500"]
    if ns.get("mode") == "discrete":  # appended last, so they override the example's own (argparse)
        extra += ["--generations", "1", "--population", "4"]
    if script == "train.py" and not ns["skip_validation"] and ns["test_csv_path"] is None:
        from utils.erase.concepts import concept_type, parse_concepts, rece_settings

        csv = rece_settings(concept_type(ns["concept_type"]), parse_concepts(ns["concepts"]))["validation_csv"]
        extra += ["--test_csv_path", f"dataset/{csv}"]
    return extra


@pytest.fixture(scope="module")
def workspace_env(scorer_env):
    import os
    import sys

    env = dict(scorer_env)
    env.update(OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def run_in(workspace: Path, env: dict, tiny: Path, script: str, argv: list[str]):
    import os
    import subprocess
    import sys

    from tiny import write_small_datasets

    if not (workspace / "dataset").is_dir():
        write_small_datasets(workspace / "dataset", image_size=16, always={"i2p.csv": [2260]})
    cmd = [sys.executable, str(REPO / script), *argv, *budget_flags(script, argv, tiny)]
    proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, env={**os.environ, **env}, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_every_docstring_command_is_run_or_excused():
    docs = docstring_commands()
    assert set(docs) == {k for k in DOC_ORDER if k not in SETUP} | set(NOT_RUN)


def readme_commands_run() -> list[tuple[str, list[str]]]:
    """(script, argv) of the README commands that test_readme_commands_run runs, in order."""
    # the pipeline's commands (the development section's mutation run is not part of it)
    readme = [(script, argv) for where, script, argv in CMDS
              if where.startswith("README") and script.endswith(".py") and not script.startswith("tests/")]
    # The attack commands run end to end in tests/test_attacks.py on tiny budgets (each CLI, its resume
    # and seeding); here the erasure, generation, scoring and baseline commands run in order.
    return [(s, a) for s, a in readme if not s.startswith("attack_methods/")]


@pytest.mark.slow
def test_readme_commands_run(tmp_path, workspace_env, tiny_pipeline_dir):
    readme = readme_commands_run()
    assert [s for s, _ in readme][:4] == ["execs/train_uce.py", "train.py", "execs/generate_images.py",
                                          "compute_nudity_rate.py"]
    for script, argv in readme:
        run_in(tmp_path, workspace_env, tiny_pipeline_dir, script, argv)
    import json
    rates = json.loads((tmp_path / "runs" / "rece-nudity" / "detect_rate.json").read_text())
    assert {"base", "epoch_1", "epoch_2", "epoch_3"} <= set(rates)
    assert "2260_0.png" in {p.name for p in (tmp_path / "runs" / "i2p-rece" / "nudity" / "imgs").iterdir()}


@pytest.mark.slow
def test_docstring_commands_run(tmp_path, workspace_env, tiny_pipeline_dir):
    docs = docstring_commands()
    # A docstring example that is also a README command, word for word, is run (with the same budget
    # flags, on the same small datasets) by test_readme_commands_run; the chain here reads none of
    # their outputs, so it does not run them a second time.
    in_readme_test = readme_commands_run()
    skipped = []
    for step in DOC_ORDER:
        script = SETUP[step][0] if step in SETUP else step
        for argv in ([SETUP[step][1:]] if step in SETUP else docs[step]):
            if step not in SETUP and (script, argv) in in_readme_test:
                skipped.append(script)
                continue
            run_in(tmp_path, workspace_env, tiny_pipeline_dir, script, argv)
    assert set(skipped) <= {"execs/train_uce.py", "execs/train_esd.py", "compute_nudity_rate.py"}, skipped
    assert (tmp_path / "runs" / "table-i2p.md").is_file()
    assert (tmp_path / "runs" / "attack-ringabell-nudity" / "asr.json").is_file()
