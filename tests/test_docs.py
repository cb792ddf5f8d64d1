"""Citations resolve inside the repository, and the README's layout section matches the tree."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = (".py", ".sh", ".md", ".ini", ".txt")


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / f for f in out.split() if f.endswith(CITED) and not f.startswith("models/")]
    here = Path(__file__)
    return [f for f in files if f.is_file() and f != here]


def _method_sections() -> set[str]:
    text = (ROOT / "docs" / "method.md").read_text()
    return set(re.findall(r"^## §(\d+[a-z]?) ", text, flags=re.M))


def test_method_sections_are_the_cited_numbering():
    # The code cites these numbers; they may be appended to, never renumbered.
    required = {"1", "2", "2a", "2b", "3", "4", "5", "6", "6a", "7", "8", "9", "10", "11", "12"}
    assert required <= _method_sections()


def test_every_method_citation_names_an_existing_section():
    sections = _method_sections()
    bad = []
    for f in _tracked_text_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for cite in re.findall(r"docs/method\.md ((?:§\d+[a-z]?(?:\s*(?:-|,|/|and)\s*)?)+)", line):
                for s in re.findall(r"§(\d+[a-z]?)", cite):
                    if s not in sections:
                        bad.append(f"{f.relative_to(ROOT)}:{n}: §{s}")
    assert not bad, "citations of sections that docs/method.md does not have:\n" + "\n".join(bad)


def test_no_citations_of_documents_outside_the_repository():
    pattern = re.compile(r"\bSPEC\b|\bissue \d+")
    bad = [f"{f.relative_to(ROOT)}:{n}: {line.strip()[:80]}"
           for f in _tracked_text_files()
           for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not bad, "citations of SPEC or of issue numbers:\n" + "\n".join(bad)


def test_readme_layout_names_every_top_level_entry():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    names = {line.split()[0].split("/")[0] for line in layout.splitlines() if line and not line[0].isspace()}
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {f.split("/")[0] for f in out.split()} - {"README.md", ".gitignore"}
    assert top <= names, f"top-level entries missing from the README's layout: {sorted(top - names)}"
    assert names <= top, f"layout names entries that are not in the tree: {sorted(names - top)}"
    utils_dirs = {f.split("/")[1] for f in out.split() if f.startswith("utils/") and f.count("/") == 2}
    for d in utils_dirs:
        assert f"  {d}/" in layout, f"utils/{d}/ is missing from the README's layout"
