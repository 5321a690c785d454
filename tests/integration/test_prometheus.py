"""The shipped monitoring works against a real sluice: conf/prometheus-alerts.yml passes
`promtool check rules`, a real Prometheus (Debian's `prometheus` package: scripts/install-deps
test) scraping two sluices sees each alert fire (a pool at 100% of a max_db_connections cap with a
client waiting; a pool whose database does not answer), and every query of
conf/grafana-dashboard.json names metrics that /metrics has and is valid PromQL."""

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import Background, pick_port, wait_until
from test_health import start_http
from test_http import hold_transaction, metrics, parse_metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "conf" / "prometheus-alerts.yml"
DASHBOARD = REPO / "conf" / "grafana-dashboard.json"
INSTALL_HINT = "install Debian's prometheus package: scripts/install-deps test"


def tool(name):
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not path:
        pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)
    return path


def dashboard_exprs():
    """Every PromQL expression of the dashboard (panel targets and template variable queries),
    with Grafana's variables replaced as Grafana would (all databases, a 1m rate window)."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
            exprs.append(m.group(1) if m else q)
    assert len(exprs) >= 10, exprs
    return [e.replace("$__rate_interval", "1m").replace("$database", ".*") for e in exprs]


def metric_names(expr):
    return set(re.findall(r"\bsluice_[a-z_]+\b", expr))


def test_promtool_accepts_the_alert_rules():
    p = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 3 rules found" in p.stdout, p.stdout


class Prometheus:
    def __init__(self, workdir, targets, rules):
        self.port = pick_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [{json.dumps(str(rules))}]\n"
            "scrape_configs:\n  - job_name: sluice\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.logpath = workdir / "prometheus.log"
        wait_until(self.ready, 60, interval=0.5, what="Prometheus to start")

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def ready(self):
        assert self.proc.poll() is None, self.logpath.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def firing(self):
        return [a for a in self.api("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.mark.timeout(180)
def test_prometheus_fires_the_alerts_and_the_dashboard_queries_exist(start_sluice, pg, tmp_path):
    # The shipped rules, with each `for:` shortened so that the test need not wait minutes.
    rules = tmp_path / "sluice-alerts.yml"
    text, n = re.subn(r"(?m)^(\s+for:) \S+$", r"\1 2s", RULES.read_text())
    assert n == 3
    rules.write_text(text)

    busy = start_http(start_sluice, {"default_pool_size": 10, "max_db_connections": 2,
                                     "query_wait_timeout": 120})
    down = start_http(start_sluice, {"server_connect_timeout": 2},
                      databases={"appdb": pg.db_entry(port=pick_port())})
    with pytest.raises(Exception):
        down.connect()  # nothing listens there: the pool is down
    with busy.connect() as c:  # some traffic, so that every histogram has samples
        for _ in range(3):
            c.execute("SELECT 1")
    holders = [hold_transaction(busy, application_name="etl") for _ in range(2)]
    waiter = busy.connect(application_name="web")
    bg = Background(waiter.execute, "SELECT 'served'")
    prom = Prometheus(tmp_path, [f"127.0.0.1:{busy.http_port}", f"127.0.0.1:{down.http_port}"],
                      rules)
    try:
        def fired():
            got = {(a["labels"]["alertname"], a["labels"]["instance"]): a for a in prom.firing()}
            want = [("SluiceServerCapAbove80Percent", f"127.0.0.1:{busy.http_port}"),
                    ("SluiceClientsWaiting", f"127.0.0.1:{busy.http_port}"),
                    ("SluicePoolDown", f"127.0.0.1:{down.http_port}")]
            return got if all(w in got for w in want) else None
        got = wait_until(fired, 90, interval=1, what="the three alerts to fire")
        cap = got[("SluiceServerCapAbove80Percent", f"127.0.0.1:{busy.http_port}")]
        assert cap["labels"]["key"] == "max_db_connections", cap
        assert cap["labels"]["database"] == "appdb" and cap["labels"]["user"] == "app", cap
        assert float(cap["value"]) == pytest.approx(1.0), cap
        assert "100%" in cap["annotations"]["summary"], cap

        # The dashboard: every metric it names is in /metrics, and Prometheus accepts each query.
        samples, types = parse_metrics(metrics(busy))
        exposed = set(types) | {name for name, _ in samples}
        for expr in dashboard_exprs():
            missing = metric_names(expr) - exposed
            assert not missing, f"dashboard query {expr!r} names metrics /metrics lacks: {missing}"
            r = prom.api("/api/v1/query", query=expr)
            assert r["status"] == "success", (expr, r)
        # (and the cap panel shows the pool at 100%)
        panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"]
                     if p["title"] == "Server cap in use (%)")
        expr = panel["targets"][0]["expr"].replace("$database", ".*")
        r = prom.api("/api/v1/query", query=expr)
        values = [float(x["value"][1]) for x in r["data"]["result"]
                  if x["metric"]["instance"] == f"127.0.0.1:{busy.http_port}"]
        assert values == [pytest.approx(100.0)], r
    finally:
        prom.stop()
        for c in holders:
            c.close()
        try:
            bg.result(20)
        except Exception:  # noqa: BLE001 - the waiter only needs to end
            pass
        waiter.close()
