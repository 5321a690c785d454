"""docs/operations.md's "Errors clients can see" is the one table a retry policy is written from:
every SQLSTATE in src/protocol/error.c's failure table must be in it, each row must say whether retrying is
safe and whether the connection is still usable, and distinct causes (full, down, paused, shutting
down, timeouts) must have distinct codes."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sqlstates_sent():
    """{code: [failure names]} from error.c's table, through sqlstate.def."""
    codes = dict(re.findall(r'SQLSTATE\((\w+), "(\w{5})"\)', (ROOT / "src/protocol/sqlstate.def").read_text()))
    src = (ROOT / "src/protocol/error.c").read_text()
    table = src[src.index("static const struct failure_info table[]"):src.index("#undef F")]
    sent = {}
    for name, sym in re.findall(r"\[(FAIL_\w+)\]\s*=\s*F\(\s*\w+,\s*(\w+),", table):
        sent.setdefault(codes[sym], []).append(name)
    return sent


def documented_error_rows():
    text = (ROOT / "docs/operations.md").read_text()
    section = text[text.index("## Errors clients can see"):]
    end = section.find("\n## ", 1)
    section = section[:end] if end > 0 else section
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    return header, rows


def test_documented_error_table_lists_every_sqlstate_sluice_sends_with_retry_advice():
    header, rows = documented_error_rows()
    assert header == ["SQLSTATE", "when", "severity", "safe to retry?",
                      "connection still usable?"], header
    documented = set()
    for r in rows:
        documented.update(re.findall(r"`(\w{5})`", r["SQLSTATE"]))
        assert r["safe to retry?"] and r["connection still usable?"], r
    missing = {code: names for code, names in sqlstates_sent().items() if code not in documented}
    assert not missing, \
        f"SQLSTATEs sluice sends that docs/operations.md's table does not list: {missing}"


def test_full_down_paused_shutdown_and_timeouts_have_distinct_codes():
    sent = sqlstates_sent()
    code_of = {name: code for code, names in sent.items() for name in names}
    causes = {"full": code_of["FAIL_WAIT_TIMEOUT"], "down": code_of["FAIL_DATABASE_DOWN"],
              "paused": code_of["FAIL_POOL_PAUSED"], "shutdown": code_of["FAIL_SHUTDOWN"],
              "idle": code_of["FAIL_CLIENT_IDLE_TIMEOUT"],
              "idle in transaction": code_of["FAIL_IDLE_TRANSACTION_TIMEOUT"]}
    assert len(set(causes.values())) == len(causes), causes
    assert causes == {"full": "53300", "down": "57P03", "paused": "57000", "shutdown": "57P01",
                      "idle": "57P05", "idle in transaction": "25P03"}, causes
    # a request that never ran is answered with an ERROR that keeps the session, same code
    for f in ("WAIT_TIMEOUT", "DATABASE_DOWN", "POOL_PAUSED"):
        assert code_of[f"FAIL_{f}_RETRY"] == code_of[f"FAIL_{f}"], f
