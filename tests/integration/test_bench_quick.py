"""scripts/bench --quick: the benchmark's smoke mode (throwaway Postgres, PgBouncer and sluice,
every scenario for about a second) must finish, exit 0 and print the whole report.

It runs against $SLUICE_BIN (default build/sluice), the binary the rest of the suite tests, so a
crash, a failed login or a pgbench error under load fails here too. Numbers are not checked:
one-second runs on a shared CI machine are far too noisy for that.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import binary_is_sanitized

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"


def _sluice_bin():
    return Path(os.environ.get("SLUICE_BIN", str(REPO / "build" / "sluice")))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_quick(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("scripts/bench runs Postgres and PgBouncer as user postgres: needs root")
    binary = _sluice_bin()
    if not binary.exists():
        pytest.skip(f"no sluice binary at {binary}")
    if binary_is_sanitized(binary):
        pytest.skip("the benchmark smoke run is made once, against the plain build (this is the "
                    "ASan pass)")
    if not (shutil.which("pgbouncer") or Path("/usr/sbin/pgbouncer").exists()):
        # scripts/bench installs it itself; only skip when that is impossible (no apt).
        if not shutil.which("apt-get"):
            pytest.skip("pgbouncer is not installed and apt-get is not available")

    out = tmp_path / "bench-results.md"
    t0 = time.monotonic()
    p = subprocess.run(
        ["bash", str(BENCH), "--quick", "--sluice-bin", str(binary), "--output", str(out),
         "--timeout", "240"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=290,
    )
    elapsed = time.monotonic() - t0
    # show what happened whatever the outcome (pytest prints it on failure)
    print(p.stdout)
    print(p.stderr[-8000:])
    assert p.returncode == 0, f"scripts/bench --quick exited with {p.returncode}"

    report = p.stdout
    assert out.read_text().strip() == report.strip()
    assert report.startswith("# sluice benchmark")
    for heading in ("## Throughput and proxy cost", "## Idle clients", "## COPY to a slow reader"):
        assert heading in report
    names = ["select-simple-c1", "select-simple-c16", "select-extended-c1", "select-extended-c16",
             "prepared-c16", "tpcb-c16", "storm-trust-c16", "storm-scram-c16", "idle-100",
             "copy-50mb"]
    for name in names:
        row = next((ln for ln in report.splitlines() if ln.startswith(f"| `{name}`")), None)
        assert row is not None, f"no table row for {name}"
        # the sluice column of every row holds a number, never "failed"
        cells = [c.strip() for c in row.strip("|").split("|")]
        sluice_cell = cells[2] if name.startswith("idle-") else cells[3]
        assert re.match(r"^[\d,.]+", sluice_cell), f"{name}: sluice cell is {sluice_cell!r}"
        if not name.startswith(("idle-", "copy-")):
            # wake-ups and preemptions per transaction, PgBouncer / sluice, from /proc
            for c in cells[-2:]:
                assert re.match(r"^.* / [\d.]+", c), f"{name}: context-switch cell is {c!r}"
    # no sluice run failed (PgBouncer failing -M prepared in transaction mode is expected)
    assert not re.search(r"^- `[^`]+` rep \d+, sluice:", report, re.M), report
    assert elapsed < 120, f"--quick took {elapsed:.0f} s"
