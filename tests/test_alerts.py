"""The alerts (`deploy/prometheus/alerts.yml`): `promtool check rules` is clean; `promtool test rules` runs
their unit tests (`deploy/prometheus/alerts_test.yml`), which make every alert fire and stay silent, fail
when any alert never fires and when any `for:` is dropped; every alert has a severity, a summary, a
description and a runbook, every runbook an alert; Alertmanager routes every severity and inhibits only
alerts that exist; the README's list of alerts is the rules'. (A real Prometheus evaluating these rules
over a real worker and collector: tests/test_operators.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from test_operators import promtool

from devstack.grafana import ALERT_RULES, ALERTS, comparison

ROOT = Path(__file__).parent.parent
UNIT_TESTS = ALERT_RULES.parent / "alerts_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
SEVERITIES = {"page", "ticket"}


def unit_test_cases() -> list[dict]:
    return [case for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in group["alert_rule_test"]]


def failing_alerts(rules: dict, tmp_path: Path) -> set[str]:
    """The alerts whose unit tests fail against `rules` (alerts.yml's groups, changed)."""
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    tested = promtool("test", "rules", str(tmp_path / UNIT_TESTS.name))
    assert tested.returncode == 1, tested.stdout + tested.stderr
    return set(re.findall(r"alertname: (\w+), time:", tested.stdout + tested.stderr))


def test_the_rules_pass_promtool_check_rules():
    checked = promtool("check", "rules", str(ALERT_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().splitlines()[-1].strip() == f"SUCCESS: {len(ALERTS)} rules found"
    assert checked.stderr == ""  # no warning either


def test_the_unit_tests_pass_and_make_every_alert_fire_and_stay_silent():
    tested = promtool("test", "rules", str(UNIT_TESTS))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    assert yaml.safe_load(UNIT_TESTS.read_text())["rule_files"] == [ALERT_RULES.name]
    cases = unit_test_cases()
    assert {case["alertname"] for case in cases} == set(ALERTS)
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fired == silent == set(ALERTS)


def test_the_unit_tests_fail_when_an_alert_never_fires_or_fires_before_its_for(tmp_path):
    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = "vector(1) > 1"
    assert failing_alerts(rules, tmp_path) == set(ALERTS)

    rules = yaml.safe_load(ALERT_RULES.read_text())
    durations = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if rule.pop("for", None)}
    assert len(durations) > 15 and failing_alerts(rules, tmp_path) == durations


def test_every_alert_has_a_severity_a_summary_a_description_with_its_value_and_a_runbook():
    for name, rule in ALERTS.items():
        assert re.fullmatch(r"Kern[A-Z][A-Za-z]+", name)
        assert rule["labels"].keys() == {"severity"} and rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations.keys() == {"summary", "description", "runbook_url"}, name
        assert "{{" not in annotations["summary"], name  # the same for every alert of a group
        try:
            comparison(name)
        except ValueError:  # a state (up, degraded, poisoned): the description names what is in it
            assert "$labels" in annotations["description"] or "absent(" in rule["expr"], name
        else:  # a measure above a threshold: the description says how far
            assert "$value" in annotations["description"], name
        assert annotations["runbook_url"] == f"docs/runbooks/{name}.md", name
        assert (ROOT / annotations["runbook_url"]).is_file(), name
    assert {path.stem for path in RUNBOOKS.glob("*.md")} == set(ALERTS) | {"README"}


def test_each_runbook_says_what_the_alert_means_how_to_confirm_it_what_to_do_and_what_never_to_do():
    for name, rule in ALERTS.items():
        runbook = (RUNBOOKS / f"{name}.md").read_text()
        assert runbook.startswith(f"# {name}\n"), name
        assert f"**{rule['labels']['severity']}**" in runbook.split("\n## ")[0], name  # in its first paragraph
        headings = re.findall(r"^## (.+)$", runbook, re.MULTILINE)
        assert headings == ["What it means", "Confirm", "What to do", "Never"], name
        for link in re.findall(r"\]\(([^)#]+)", runbook):  # every relative link leads to a file
            if not re.match(r"https?://", link):
                assert (RUNBOOKS / link).resolve().exists(), (name, link)
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"({name}.md)" in index for name in ALERTS)


def test_amtool_accepts_the_alertmanager_configuration_and_routes_each_severity_to_its_receiver():
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    checked = subprocess.run(
        ["amtool", "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    for route in config["route"]["routes"]:
        severity = re.fullmatch(r'severity="(\w+)"', route["matchers"][0])[1]
        routed = subprocess.run(
            [
                "amtool",
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_YML}",
                "alertname=KernProbe",
                f"severity={severity}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert routed.stdout.split() == [route["receiver"]], routed.stdout + routed.stderr


def test_alertmanager_routes_every_severity_and_inhibits_only_alerts_that_exist():
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    routed = {}
    for child in route["routes"]:
        (matcher,) = child["matchers"]
        severity = re.fullmatch(r'severity="(\w+)"', matcher)[1]
        assert child["receiver"] in receivers
        routed[severity] = child["receiver"]
    assert {rule["labels"]["severity"] for rule in ALERTS.values()} == SEVERITIES
    assert set(routed) | {"ticket"} == SEVERITIES and routed["page"] != route["receiver"]  # tickets by default
    for receiver in receivers.values():  # stubs until a real one is plugged in (README, "Operating it")
        (webhook,) = receiver["webhook_configs"]
        assert re.fullmatch(r"http://[a-z-]+\.invalid/\w+", webhook["url"])
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            label, operator, value = re.fullmatch(r'(\w+)(=~|=)"(.+)"', matcher).groups()
            if label == "alertname":
                names = value.split("|") if operator == "=~" else [value]
                assert set(names) <= set(ALERTS), matcher
            else:
                assert (label, value) == ("job", "kern-collector"), matcher
        for label in inhibit.get("equal", []):  # both sides carry it
            assert label in {"instance", "partition"}, inhibit


def test_the_readme_lists_every_alert_with_its_severity_condition_and_runbook():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Operating it\n")[1].split("\n## ")[0]
    rows = {
        cells[0].strip("` "): [cell.strip() for cell in cells[1:]]
        for cells in (line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| `Kern"))
    }
    assert list(rows) == list(ALERTS)
    for name, rule in ALERTS.items():
        severity, condition, runbook = rows[name]
        expr = " ".join(rule["expr"].split()).replace("|", "\\|")
        assert severity == rule["labels"]["severity"], name
        assert condition == f"`{expr}`" + (f" for {rule['for']}" if "for" in rule else ""), name
        assert runbook == f"[runbook](docs/runbooks/{name}.md)", name
