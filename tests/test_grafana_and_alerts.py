"""contrib/prometheus/alerts.yml and contrib/grafana/peerix.json, for those who scrape: the rules pass Debian's
promtool (checked, and unit-tested: each alert fires when it should), the dashboard's queries are PromQL that
promtool accepts, and every metric either names exists in a real scrape of a running daemon and tracker."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, offline, requires_nix

PROMTOOL = shutil.which("promtool")
pytestmark = [requires_nix, pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (scripts/dev test "
                                                                         "installs Debian's prometheus)")]
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
GRAFANA = ROOT / "contrib" / "grafana" / "peerix.json"
# Grafana's variables, as a query would have them filled in.
VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$tracker_job": ".*"}
SYNTHETIC = {"up"}  # Prometheus's own series about each scrape


def promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def grafana_queries() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    targets = [target for panel in dashboard["panels"] for target in panel.get("targets", [])]
    variables = [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    assert len(targets) >= 20 and all(target["expr"] for target in targets)
    return [target["expr"] for target in targets] + variables


def alert_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_alert_rules_pass_promtool_and_fire_when_they_should(tmp_path: Path) -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)
    promtool("test", "rules", "alerts.test.yml", cwd=ALERTS.parent)
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS.parent / "alerts.test.yml").read_text()))
    assert names == tested == {"PeerixDaemonDown", "PeerixTrackerDown", "PeerixVerificationFailures",
                               "PeerixHitRatioCollapsed", "PeerixPeersBanned"}


def test_the_grafana_dashboard_parses_and_its_queries_are_promql(tmp_path: Path) -> None:
    queries = grafana_queries()
    rules = {"groups": [{"name": "grafana", "rules": [
        {"record": f"grafana:query_{number}", "expr": _filled(query)}
        for number, query in enumerate(queries) if not query.startswith("label_values(")]}]}
    (tmp_path / "grafana.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", "grafana.yml", cwd=tmp_path)


@pytest.mark.parametrize("backend", ["sqlite"])  # the metrics are the same on PostgreSQL
def test_every_metric_named_exists_in_a_real_scrape(start_daemon, start_tracker, tmp_path: Path) -> None:
    subprocess.run(["nix-store", "--store", str(tmp_path / "store"), "--init"], check=True)
    daemon = start_daemon("serve", "--store-root", str(tmp_path / "store"), *offline(tmp_path / "state"))
    scraped = _names(httpx.get(daemon.url + "/metrics", timeout=10).text)
    scraped |= _names(start_tracker().get("/metrics").text)
    named = {name for query in grafana_queries() + alert_queries()
             for name in re.findall(r"\b(peerix_\w+|up)\b(?![\"'])", _unquoted(query))}
    assert len(named) >= 30
    assert sorted(named - scraped - SYNTHETIC) == []


def _filled(query: str) -> str:
    for variable, value in VARIABLES.items():
        query = query.replace(variable, value)
    return query


def _unquoted(query: str) -> str:
    """The query without its label values (a metric name never hides in a string)."""
    return re.sub(r'"[^"]*"', '""', query)


def _names(exposition: str) -> set[str]:
    """Every series name a scrape offers, a labelled counter or histogram with no sample yet included."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names
