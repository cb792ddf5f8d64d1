"""Shared fixtures: tiny pipelines built offline; the public datasets ship in dataset/."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist (`-n auto`, the README's test command) the workers share the cores: each worker
# and the CLIs it starts get cores / workers threads (one each with 2 workers on 2 cores) unless
# OMP_NUM_THREADS says otherwise, so that the workers do not oversubscribe the cores (the tests' CLI
# runs are dominated by one-threaded imports and tiny models anyway).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // _WORKERS)))


@pytest.fixture(scope="session", autouse=True)
def gram_cache_dir(tmp_path_factory) -> Path:
    """The erasure CLIs' on-disk Gram cache (docs/models.md), private to this test session."""
    folder = tmp_path_factory.mktemp("gram_cache")
    os.environ["RECE_TOOLKIT_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A saved diffusers StableDiffusionPipeline with random tiny weights (built once per session)."""
    from tiny import build_random_pipeline

    folder = tmp_path_factory.mktemp("tiny_sd")
    build_random_pipeline(folder, "tiny", seed=0)
    return folder


@pytest.fixture(scope="session")
def scorer_env(tmp_path_factory) -> dict:
    """Environment under which the scorers' default models resolve to tiny offline stand-ins
    (`tiny.offline_scorers`), built once per session for the script and command tests."""
    from tiny import offline_scorers

    return offline_scorers(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    """The tiny pipeline loaded in process, run on one thread (as the CLIs run in the tests)."""
    import torch

    from utils.models import load_pipeline, quiet_libraries

    quiet_libraries()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_pipeline(str(tiny_pipeline_dir))
    torch.set_num_threads(threads)


def run_script(script: str, *args, check: bool = True, env: dict | None = None, timeout: int = 600):
    """Run a project CLI as a user would (`python script args`), from the repo root."""
    cmd = [sys.executable, str(REPO / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc


# End-to-end tests that run CLIs on models for more than ~2 s each (measured on the 2-core CPU): marked
# `slow` here, beside the ones marked in their files, so that `pytest -m "not slow"` stays quick.
SLOW_TESTS = {
    "tests/test_attack_and_validation.py::test_adversarial_rates_generate_from_each_epochs_c_prime",
    "tests/test_attack_and_validation.py::test_rece_validation_writes_rates_and_keeps_best_epoch",
    "tests/test_attack_and_validation.py::test_ring_a_bell_conditions_on_e_plus_eta_v",
    "tests/test_attacks.py::test_bad_input_one_line_exit_2_before_loading",
    "tests/test_attacks.py::test_gradient_attack_cli_end_to_end",
    "tests/test_attacks.py::test_ring_a_bell_discrete_cli_and_seed",
    "tests/test_attacks.py::test_ring_a_bell_embedding_vector_is_the_authors_by_default",
    "tests/test_attacks.py::test_seed_reproduces_and_changes_adversarial_prompts",
    "tests/test_baselines.py::test_checkpoint_with_a_key_the_unet_lacks_is_refused",
    "tests/test_baselines.py::test_esd_bad_input",
    "tests/test_baselines.py::test_esd_cli_saves_the_trained_set_and_resumes_exactly",
    "tests/test_baselines.py::test_full_checkpoint_gives_the_pipeline_built_with_that_unet",
    "tests/test_baselines.py::test_rece_on_a_foreign_checkpoint_reproduces_it_plus_the_edit",
    "tests/test_baselines.py::test_rece_on_a_full_checkpoint_that_changes_only_the_matrices_records_no_parent",
    "tests/test_baselines.py::test_sld_bad_input",
    "tests/test_baselines.py::test_sld_cli_records_the_setting_and_keeps_batching",
    "tests/test_baselines.py::test_sld_equals_the_diffusers_safe_pipeline",
    "tests/test_erasure_cli.py::test_art_defaults_and_the_1733_artist_preserve_set",
    "tests/test_erasure_cli.py::test_bad_inputs_fail_in_one_line",
    "tests/test_erasure_cli.py::test_legacy_full_unet_pt_and_other_formats",
    "tests/test_erasure_cli.py::test_many_concept_rece_matches_an_explicit_computation",
    "tests/test_erasure_cli.py::test_pickle_that_runs_code_is_refused",
    "tests/test_erasure_cli.py::test_rece_cli_matches_spec",
    "tests/test_erasure_cli.py::test_rece_from_base_model_with_tensor_technique",
    "tests/test_erasure_cli.py::test_rece_tensor_technique_runs_from_uce_stage",
    "tests/test_erasure_cli.py::test_rerun_does_not_overwrite",
    "tests/test_erasure_cli.py::test_train_rerun_is_refused_and_overwrite_replaces",
    "tests/test_erasure_cli.py::test_uce_cli_matches_spec",
    "tests/test_erasure_cli.py::test_uce_cli_tensor_technique_and_preserve",
    "tests/test_erasure_cli.py::test_uce_guided_concepts_and_add_prompts",
    "tests/test_fidelity.py::test_classify_objects_cli_with_torchvision_weights",
    "tests/test_fidelity.py::test_clip_score_defaults_to_vit_b32",
    "tests/test_fidelity.py::test_object_run_from_a_checkpoint_validates_it_as_uce",
    "tests/test_fidelity.py::test_uce_add_prompts_erases_each_template_towards_the_bare_guide",
    "tests/test_fidelity.py::test_zero_epochs_from_a_checkpoint_writes_the_best_it_prints",
    "tests/test_generation.py::test_bad_input_exits_2_with_one_line_and_writes_nothing",
    "tests/test_generation.py::test_batch_size_does_not_change_images",
    "tests/test_generation.py::test_cli_writes_the_run_folder",
    "tests/test_generation.py::test_resume_after_sigkill_gives_the_uninterrupted_images",
    "tests/test_generation.py::test_row_order_does_not_change_images",
    "tests/test_generation.py::test_two_processes_equal_one",
    "tests/test_hardening.py::test_absurd_sizes_and_late_inputs_fail_first",
    "tests/test_hardening.py::test_failed_load_leaves_no_claim_and_the_corrected_rerun_works",
    "tests/test_hardening.py::test_grayscale_and_16_bit_images_are_scored",
    "tests/test_hardening.py::test_nan_checkpoint_is_named_before_anything_runs",
    "tests/test_hardening.py::test_nan_model_weights_do_not_become_black_images",
    "tests/test_hardening.py::test_os_errors_end_in_one_line_naming_the_path",
    "tests/test_hardening.py::test_run_folder_of_another_cli_is_refused",
    "tests/test_hardening.py::test_safetensors_with_another_suffix_is_read",
    "tests/test_models.py::test_cache_hit_corrupt_and_stale",
    "tests/test_models.py::test_rece_on_sdxl_satisfies_the_closed_form",
    "tests/test_models.py::test_sd2_base_is_epsilon_and_erases",
    "tests/test_models.py::test_sd2_v_prediction_uce_rece_and_generation",
    "tests/test_models.py::test_sdxl_generation_and_ring_a_bell",
    "tests/test_models.py::test_uce_tokens_last_is_uce_2025",
    "tests/test_shapes.py::test_training_script_end_to_end_tiny_and_deterministic",
}


LONGEST_FIRST = ("tests/test_scripts.py", "tests/test_commands.py", "tests/test_demo.py")
_ORDER = {name: i for i, name in enumerate(LONGEST_FIRST)}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    # The files of the longest tests first (each paper script, the README's and the docstrings' command
    # chains, the demo: minutes each), the rest in their order: pytest-xdist hands tests to its workers
    # in this order (the first chunk of each worker at once: the scripts to one, the command chains and
    # the demo to the other), so the short tests fill the ends of the workers' runs instead of one
    # script test running alone at the end. Each file stays in one piece (its module fixtures are
    # built once).
    items.sort(key=lambda item: _ORDER.get(item.nodeid.split("::")[0], len(_ORDER)))
