"""The README's demo (scripts/demo.sh) on the built-in shapes model, end to end, with its two claims:
the base model is competent, and UCE erases red while most of the other colours stay correct.
The attack outcome is reported, not asserted."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (REPO / "models" / "shapes" / "model_index.json").exists(), reason="no built-in model")
def test_demo_table(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OUT": str(out)}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout[-2000:])
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows["SD"]["colour_accuracy"] >= 0.9 and rows["SD"]["shape_accuracy"] >= 0.8, rows["SD"]
    # measured: 0.0 and 0.775 (the authors' --add_prompts mapping erases "a red circle" towards " ")
    assert rows["UCE"]["erased_rate"] <= 0.1 and rows["UCE"]["other_colour_accuracy"] >= 0.7, rows["UCE"]
    for name in ("SD", "UCE", "RECE"):
        assert 0 <= rows[name]["attack_success_rate"] <= 1
        assert (out / f"gen-{name.lower()}" / "grid.png").exists()
    assert "Ring-A-Bell ASR" in (out / "table.md").read_text()
