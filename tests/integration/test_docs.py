"""The README and docs/ stay whole: every relative link names a file that exists and, with an
anchor, a heading that file has; docs/config.md and conf/sluice.ini are what
scripts/gen-config-docs makes from src/config/config_keys.def (issue 20)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text())
    slugs = set()
    for title in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def links():
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            yield pytest.param(doc, target, id=f"{doc.relative_to(REPO)}->{target}")


def test_the_docs_link_to_each_other():
    assert len(list(links())) >= 20


@pytest.mark.parametrize("doc,target", links())
def test_link_resolves(doc, target):
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    assert dest.exists(), f"{doc.relative_to(REPO)} links to {target}: no such file"
    if anchor:
        assert anchor in anchors(dest), \
            f"{doc.relative_to(REPO)} links to {target}: {dest.name} has no such heading"


def test_generated_config_docs_are_current():
    p = subprocess.run([sys.executable, str(REPO / "scripts/gen-config-docs"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
