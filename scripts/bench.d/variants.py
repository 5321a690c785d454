"""sluice variants measured in one scripts/bench run: several binaries or configurations of sluice
side by side with direct Postgres and PgBouncer, interleaved in every repetition
(direct, PgBouncer, sluice A, sluice B, direct, ...), so the machine's drift hits each alike.

  --workers 1,2              the binary under test twice, with `workers = 1` and `workers = 2`
                             (targets "sluice w=1", "sluice w=2")
  --sluice-extra 'LINE'      a config line added to the [sluice] section of every variant of the
                             binary under test (repeatable)
  --sluice-also LABEL=PATH   another sluice binary, measured as target "sluice LABEL" with the
                             bench's config only (no --sluice-extra, no workers line: an older
                             build may not know the key); repeatable

Without any of these there is one variant, target "sluice", and the report is the one it always
was. The comparison table (compare_table) gives, per scenario and variant, the medians and the
medians of per-repetition ratios: a variant's run over the PgBouncer run and over the first
variant's run of the same repetition, which cancel most of the drift between repetitions.
"""

import re
import statistics
from pathlib import Path


class Variant:
    """One sluice to measure: its target name, binary and extra [sluice] lines."""

    def __init__(self, target, binary, extra=()):
        self.target = target
        self.binary = Path(binary)
        self.extra = list(extra)
        # file names (log, ini, pinned binary copy): "sluice", "sluice-w2", "sluice-before"
        self.slug = re.sub(r"[^A-Za-z0-9]+", "-", target.replace("=", "")).strip("-")


def parse_variants(sluice_bin, workers, extra, also):
    """The variants the command line asks for; raises ValueError on a malformed argument."""
    extra = [ln for arg in extra for ln in arg.split("\n") if ln.strip()]
    out = []
    if workers:
        for n in (w.strip() for w in workers.split(",")):
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"--workers {workers!r}: a comma-separated list of counts >= 1")
            out.append(Variant(f"sluice w={int(n)}", sluice_bin, [f"workers = {int(n)}", *extra]))
    else:
        out.append(Variant("sluice", sluice_bin, extra))
    for spec in also:
        label, sep, path = spec.partition("=")
        if not sep or not label.strip() or not path:
            raise ValueError(f"--sluice-also {spec!r}: expected LABEL=PATH")
        if not Path(path).is_file():
            raise ValueError(f"--sluice-also {spec!r}: no file {path}")
        out.append(Variant(f"sluice {label.strip()}", path))
    names = [v.target for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"two variants with the same name: {names}")
    return out


def is_sluice(target):
    return target == "sluice" or target.startswith("sluice ")


def _fmt(x):
    if x is None:
        return "–"
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _spread(xs):
    """median (min–max) of the values, or – when there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    m = statistics.median(xs)
    if len(xs) == 1 or min(xs) == max(xs):
        return _fmt(m)
    return f"{_fmt(m)} ({_fmt(min(xs))}–{_fmt(max(xs))})"


def _per_rep(runs, attr):
    """{repetition: value} of the successful runs."""
    return {r.rep: getattr(r, attr) for r in runs
            if r.ok and getattr(r, attr) is not None}


def _ratios(top, bottom):
    return [top[k] / bottom[k] for k in top if k in bottom and bottom[k]]


def compare_table(by, scenarios, variants):
    """Markdown lines: each pgbench scenario's variants side by side (empty with one variant)."""
    if len(variants) < 2:
        return []
    first = variants[0].target
    lines = [
        "## sluice variants compared",
        "",
        f"Per scenario and variant: medians over the repetitions (min–max); the ratios are medians "
        f"of per-repetition ratios (the variant's run over PgBouncer's, or over {first}'s, in the "
        "same repetition).",
        "",
        f"| scenario | variant | tps | CPU µs/tx | CPU / PgBouncer | tps / PgBouncer | "
        f"CPU / {first} | tps / {first} | wake-ups/tx | preemptions/tx |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scenarios:
        t = by.get(sc.name, {})
        pgb = t.get("pgbouncer", [])
        base = t.get(first, [])
        for v in variants:
            runs = t.get(v.target, [])
            cpu, tps = _per_rep(runs, "cpu_per_unit_us"), _per_rep(runs, "value")
            cells = [
                _spread(tps.values()),
                _spread(cpu.values()),
                _spread(_ratios(cpu, _per_rep(pgb, "cpu_per_unit_us"))),
                _spread(_ratios(tps, _per_rep(pgb, "value"))),
                _spread(_ratios(cpu, _per_rep(base, "cpu_per_unit_us"))),
                _spread(_ratios(tps, _per_rep(base, "value"))),
                _spread(_per_rep(runs, "vol_csw_per_unit").values()),
                _spread(_per_rep(runs, "invol_csw_per_unit").values()),
            ]
            failed = sum(1 for r in runs if not r.ok)
            note = f" ({failed}/{len(runs)} failed)" if failed else ""
            lines.append(f"| `{sc.name}` | {v.target}{note} | " + " | ".join(cells) + " |")
    lines += ["", "Storms (`storm-*`): per new connection instead of per transaction.", ""]
    return lines
