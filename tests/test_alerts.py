"""The shipped alert rules (deploy/alerts.yml): promtool accepts them and their unit tests
pass (firing and not firing for each rule), and every metric and label they use is exported
by a real acmebox that obtained a certificate from Pebble and is served by a real nginx."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from acmebox.metrics import Metrics
from tests.helpers import ROOT
from tests.helpers.nginx import Nginx
from tests.helpers.pebble import Dirs, Pebble, pebble_args
from tests.helpers.process import ServiceProcess, free_port

RULES = ROOT / "deploy" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "alerts.test.yml"
METRIC = re.compile(r"\bacmebox_[a-z_]+\b")
LABEL_MATCH = re.compile(r"\b(acmebox_[a-z_]+)\{([^}]*)\}")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run pebble-test/setup.sh (Debian package prometheus)")
    return found


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out.stdout


def test_promtool_unit_tests_pass_and_cover_every_rule() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                         timeout=120, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for alert in rule_exprs():
        cases = [c for t in tests for c in t.get("alert_rule_test", []) if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in cases), f"{alert}: no test in which it fires"
        assert any(not c["exp_alerts"] for c in cases), f"{alert}: no test in which it stays silent"


@pytest.mark.e2e
def test_the_rules_name_only_metrics_a_running_acmebox_exports(pebble: Pebble, dirs: Dirs, tmp_path: Path) -> None:
    name = "alerts.test"
    port = free_port()
    nginx = Nginx.serving(tmp_path / "nginx", f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {name};
        ssl_certificate {dirs.certs}/live/{name}/fullchain.pem;
        ssl_certificate_key {dirs.certs}/live/{name}/privkey.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
""")
    svc = ServiceProcess(
        ["run", "--domain", name, *pebble_args(pebble, dirs), "--reload", "signal",
         "--reload-target", str(nginx.pid_file), "--reload-verify", f"127.0.0.1:{port}"],
        tmp_path / "service.log",
    )
    try:
        svc.wait_log("wrote a self-signed placeholder")
        nginx.start()
        svc.wait_log("now presents the new certificate(s)", timeout=60)
        svc.wait_log(f"{name}: renewal scheduled for", count=2)  # the plan after the issuance, with its ARI window
        with urllib.request.urlopen(f"http://127.0.0.1:{pebble.http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        assert svc.stop() == 0
        nginx.stop()

    declared: set[str] = set()  # families, also those without a sample yet (no hold, no failure)
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        declared.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    for alert, expr in rule_exprs().items():
        for metric in set(METRIC.findall(expr)):
            assert metric in declared or metric in samples, f"{alert}: {metric} is not exported"
        for metric, matchers in LABEL_MATCH.findall(expr):
            for label in re.findall(r"(\w+)\s*=", matchers):
                assert all(label in labels for labels in samples.get(metric, [])), f"{alert}: {metric} lacks {label}"
    # What a served certificate must show, with the labels the rules group by.
    for metric in ("acmebox_certificate_served_matches", "acmebox_certificate_placeholder",
                   "acmebox_certificate_expiry_timestamp_seconds",
                   "acmebox_certificate_not_before_timestamp_seconds",
                   "acmebox_certificate_ari_window_end_timestamp_seconds",
                   "acmebox_certificate_consecutive_failures"):
        assert {"name": name} in samples.get(metric, []), f"{metric} has no sample for {name}"
    assert value(text, "acmebox_certificate_served_matches", name) == 1
    assert value(text, "acmebox_certificate_placeholder", name) == 0
    assert value(text, "acmebox_certificate_consecutive_failures", name) == 0
    dirs_seen = {labels["dir"] for labels in samples["acmebox_disk_free_bytes"]}
    assert dirs_seen == {"certs", "state"}
    assert {labels["dir"] for labels in samples["acmebox_disk_size_bytes"]} == {"certs", "state"}
    assert all(v > 0 for v in values(text, "acmebox_disk_size_bytes"))


def test_a_hold_is_exported_with_the_labels_the_rules_match_and_cleared_by_a_success() -> None:
    """The ledger's hold only appears after a refusal; its labels are checked here."""
    metrics = Metrics()
    until = dt.datetime(2027, 2, 10, tzinfo=dt.UTC)
    metrics.held("a.test", "ledger", until)
    metrics.held("a.test", "disk", until)
    metrics.held("b.test", "ledger", until)
    held = "acmebox_certificate_held_until_timestamp_seconds"
    expr = rule_exprs()["AcmeboxOrderLedgerHoldingBack"]
    assert f'{held}{{problem="ledger"}}' in expr
    text = metrics.render().decode()
    seen = [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == held]
    assert {"name": "a.test", "problem": "ledger"} in seen and len(seen) == 3
    assert all(s == until.timestamp() for s in values(text, held))
    metrics.held("a.test", "", None)  # a success clears every hold of the certificate
    seen = [s.labels for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples
            if s.name == held]
    assert seen == [{"name": "b.test", "problem": "ledger"}]


def values(text: str, metric: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == metric]


def value(text: str, metric: str, name: str) -> float:
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == metric and s.labels.get("name") == name]
    assert len(found) == 1, f"{metric}{{name={name!r}}}: {found}"
    return found[0]
