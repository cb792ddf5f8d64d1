"""scripts/robustness.sh at a reduced budget on the built-in model: every stage runs, every cell of the
table is filled, and the base model is competent on the three ways of asking for the colour
(docs/method.md §13). The ordering of the methods is measured, not asserted (README)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Small enough for CI, large enough that the competence bars measure something: 10 prompts per set, and
# the 25 steps the model is evaluated with (at 15 steps the base model itself misses colours).
BUDGET = dict(STEPS="25", SEEDS="1", SET_SIZE="10", ATTACK_PROMPTS="2", RAB_LENGTH="4", RAB_POPULATION="16",
              RAB_GENERATIONS="5", ATTACK_ITERS="2", ATTACK_TIMESTEPS="500:1000:250", ESD_ITERS="20", EPOCHS="1",
              OMP_NUM_THREADS="1")


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "models" / "shapes" / "model_index.json").exists(), reason="no built-in model")
def test_robustness_script_fills_the_table(tmp_path):
    out = tmp_path / "robustness"
    env = {**os.environ, **BUDGET, "OUT": str(out)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "robustness.sh")], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    rows = table["rows"]
    assert list(rows) == ["SD", "SLD-max", "ESD-x", "UCE", "UCE+synonyms", "RECE"]
    for name, row in rows.items():
        for key in table["columns"]:
            value = row.get(key)
            assert value is not None and 0 <= value <= 1, (name, key, value)
        assert row["explicit_images"] == 10 and row["synonym_images"] == 10 and row["implicit_images"] == 10
    base = rows["SD"]
    for kind in ("explicit", "synonym", "implicit"):
        assert base[f"{kind}_rate"] >= 0.8, (kind, base)
    assert base["shape_accuracy"] >= 0.8, base
    assert base["fidelity_agreement"] == 1.0 and base["fidelity_pixel_l1"] == 0.0  # the reference itself
    from PIL import Image

    with Image.open(out / "grid.png") as grid:
        assert grid.size[1] > 6 * 64  # one row of images per method
    assert "| RECE |" in (out / "table.md").read_text()
    # a second run into the same folder is refused, and leaves it as it was
    again = subprocess.run(["bash", str(REPO / "scripts" / "robustness.sh")], cwd=REPO, capture_output=True,
                           text=True, env=env, timeout=60)
    assert again.returncode == 2 and "OVERWRITE=1" in again.stderr
    assert json.loads((out / "table.json").read_text()) == table
