"""The README and docs/ stay whole: every relative link names a file that exists and, with an
anchor, a heading that file has; docs/config.md and conf/sluice.ini are what
scripts/gen-config-docs makes from src/config/config_keys.def (issue 20); every file and
function docs/architecture.md names exists."""

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


# What docs/architecture.md names on purpose that is not in this repository: other programs'
# names, what lies beside the checkout (../shared), and names it gives as the past ("was",
# "used to be", a table's "before" column).
ARCHITECTURE_NOT_HERE = {
    "per_loop_pause", "tcp_migrate_req",         # PgBouncer's, Linux's
    "STYLE.md", "devbench/run.sh", "SLUICE_EXTRA",  # ../shared
    "budget_db_servers", "server_connect_step", "RELAY_GONE",  # the past
}
CODE_NAME = re.compile(r"[A-Za-z_]\w*\(?")
FILE_NAME = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:c|h|py|def|md|sh|mjs))\b")


def repository_words():
    """Every word of the code (src, tests but this file, scripts, conf, .ci, meson), every
    file's name and stem, and every tail of an underscored word (the page writes IN_REQUEST for
    LOGIN_RESET_IN_REQUEST)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    words = {Path(f).name for f in files} | {Path(f).stem for f in files}
    for f in files:
        if f == "tests/integration/test_docs.py":
            continue  # its list of names the repository lacks
        if f.startswith(("src/", "tests/", "scripts/", "conf/", ".ci/")) or \
                f.endswith("meson.build"):
            words |= set(re.findall(r"\w+", (REPO / f).read_text(errors="replace")))
    tails = {"_".join(w.split("_")[i:]) for w in words for i in range(1, w.count("_") + 1)}
    return words | tails


def test_every_name_in_architecture_md_exists():
    """The page promises that every function it names exists in src/ (a grep finds it). Checked:
    each file name, and each name in code (backticks or a code block) that has an underscore or
    is written as a call. Names given as patterns (server_connect_*) are passed over."""
    text = (REPO / "docs/architecture.md").read_text()
    fenced = "\n".join(FENCE.findall(text))
    code = re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) + [fenced]
    words = repository_words()
    cited = set()
    for span in code:
        for name in CODE_NAME.findall(span):
            call, name = name.endswith("("), name.rstrip("(")
            if ("_" in name or call) and not name.startswith("_") and not name.endswith("_"):
                cited.add(name)
    cited |= set(FILE_NAME.findall(text))
    missing = sorted(n for n in cited - ARCHITECTURE_NOT_HERE if Path(n).name not in words)
    assert not missing, f"docs/architecture.md names what the repository lacks: {missing}"
    stale = sorted(ARCHITECTURE_NOT_HERE - cited)
    assert not stale, f"ARCHITECTURE_NOT_HERE lists names the page no longer cites: {stale}"


def test_architecture_md_places_every_source_file_in_its_folder():
    """The page names files without their folder because section 3.2's table says which folder
    holds each: a file added to src/ is added there (config*.c stands for the config's .c files;
    a .c and its .h are one name)."""
    text = (REPO / "docs/architecture.md").read_text()
    table = text[text.index("### 3.2 "):text.index("## 4. ")]
    listed = set(re.findall(r"[\w*]+(?:\.(?:h|def))?", table))
    files = subprocess.run(["git", "ls-files", "src"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    unplaced = [str(f) for f in map(Path, files)
                if f.parent.name != "src"  # main.c, above the folders (named after the table)
                and f.name not in listed and f.stem not in listed
                and not (f.suffix == ".c" and f.stem.startswith("config"))]
    assert not unplaced, f"docs/architecture.md 3.2 does not place: {unplaced}"
