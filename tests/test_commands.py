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
