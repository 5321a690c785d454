"""Every ini example in README.md and docs/*.md passes `sluice --check` as written (issue 19).

Files an example names under /etc/sluice/ are replaced by stubs in a temporary directory; an
example that shows only some sections (a worked example of [budgets], say) gets a database from
DATABASE_URL, as a sidecar would. Nothing else is changed: a trailing `; comment` after a value,
which PgBouncer and sluice both read as part of the value, fails here as it would for a user."""

import re
from pathlib import Path

import pytest

from test_cli import assert_no_sanitizer_report, run

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
BLOCK = re.compile(r"^```ini\n(.*?)^```", re.S | re.M)


def ini_examples():
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            yield pytest.param(m.group(1), id=f"{doc.relative_to(REPO)}:{line}")


def stub_files(text, tmp_path):
    """Point every /etc/sluice/NAME at a stub file in tmp_path."""
    for path in sorted(set(re.findall(r"/etc/sluice/[\w.-]+", text))):
        stub = tmp_path / Path(path).name
        if not stub.exists():
            stub.write_text('"app" "secret"\n' if "userlist" in path else "")
        text = text.replace(path, str(stub))
    return text


def test_the_docs_have_ini_examples():
    assert len(list(ini_examples())) >= 5


@pytest.mark.parametrize("example", ini_examples())
def test_ini_example_passes_check(tmp_path, example):
    text = stub_files(example, tmp_path)
    env = {}
    if not re.search(r"^\[databases\]", text, re.M):
        env["DATABASE_URL"] = "postgres://app:secret@127.0.0.1:5432/app"
    if not re.search(r"^\[(sluice|pgbouncer)\]", text, re.M):
        text = "[sluice]\n" + text
    ini = tmp_path / "example.ini"
    ini.write_text(text)
    p = run(["--check", str(ini)], env=env)
    assert p.returncode == 0, f"--check failed on:\n{text}\nstderr:\n{p.stderr}"
    assert_no_sanitizer_report(p)
