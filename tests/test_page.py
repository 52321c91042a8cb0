"""The page of `make run` (`devstack/page.py`) in a real headless Chromium (Debian's, driven by Playwright):
every panel is a chart with data, the numbers each chart holds are its panel's SQL run directly, the
latest point grows as events land, nothing is requested from outside loopback, and nothing goes to the
console. `kern-telemetry dev` prints the page's address and serves live panels."""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from conftest import reference_rollup
from devstack.loadgen import EventGenerator
from devstack.processes import free_port, stop, wait_for_port
from pipeline.panels import DEFAULT_RANGE_S, PANELS, TIME_SERIES

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's; `make test` installs it (a browser download cannot work here)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
# Every chart's data points, and how many elements Chart.js drew for each dataset.
CHART_DATA = """() => Object.fromEntries([...document.querySelectorAll("canvas[data-panel]")].map((canvas) => {
  const chart = Chart.getChart(canvas);
  return [canvas.dataset.panel, {labels: chart.data.labels || [], datasets: chart.data.datasets.map((d, i) => (
    {label: d.label, data: d.data, drawn: chart.getDatasetMeta(i).data.length}))}];
}))"""


def shown(chart: dict, time_series: bool) -> set[tuple]:
    """(x, series, value) of every point a chart holds: x in epoch ms for time series, else the bar's label."""
    if time_series:
        return {(point["x"], dataset["label"], point["y"]) for dataset in chart["datasets"] for point in dataset["data"]}
    return {(label, dataset["label"], value) for dataset in chart["datasets"]
            for label, value in zip(chart["labels"], dataset["data"]) if value is not None}


def direct(client, panel, database: str) -> set[tuple]:
    """The panel's SQL run directly, in the same (x, series, value) form."""
    rows = client.query(panel.plain(database, DEFAULT_RANGE_S)).result_rows
    return {(calendar.timegm(x.utctimetuple()) * 1000 if isinstance(x, datetime) else x, series, value)
            for x, series, value in rows}


@pytest.fixture(scope="module")
def page_url(history, tmp_path_factory):
    """`python -m devstack.page` over the history's ClickHouse, refreshing every second."""
    port = free_port()
    log = tmp_path_factory.mktemp("page") / "page.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "devstack.page", "--port", str(port), "--refresh", "1"],
                                   env={**os.environ, **history.stack.env}, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(process)


def test_the_page_charts_every_panel_with_the_numbers_of_its_sql_live_and_only_from_loopback(history, page_url,
                                                                                            tmp_path):
    stack = history.stack
    requests, console, errors = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_url)
            page.wait_for_function(f"() => document.querySelectorAll('canvas[data-panel]').length === {len(PANELS)}")
            charts = page.evaluate(CHART_DATA)
            with stack.clickhouse() as client:
                for panel in PANELS:
                    points = shown(charts[panel.name], panel.chart == TIME_SERIES)
                    assert points, f"{panel.name}: the chart has no data"
                    assert points == direct(client, panel, stack.database), panel.name
                    for dataset in charts[panel.name]["datasets"]:
                        assert dataset["drawn"] == len(dataset["data"]), panel.name
            page.screenshot(path=tmp_path / "page.png", full_page=True)

            def runs_per_time(chart: dict) -> Counter:
                return Counter({x: sum(y for x2, _, y in shown(chart, True) if x2 == x)
                                for x, _, _ in shown(chart, True)})

            before = runs_per_time(charts["runs-per-kind"])
            more = list(EventGenerator(seed=14, timestamp_share=0).events(3_000))
            history.worker.wait_flushed(stack.produce(more))
            added = sum(reference_rollup(stack.settings, more, 0).run_counts().values())
            refreshes = int(page.evaluate("() => document.body.dataset.refreshes"))
            page.wait_for_function(f"() => Number(document.body.dataset.refreshes) > {refreshes + 1}")  # one after
            after = runs_per_time(page.evaluate(CHART_DATA)["runs-per-kind"])
        finally:
            browser.close()
    latest = max(after)
    assert latest >= max(before) and after[latest] > before.get(latest, 0)  # the latest point grew
    assert sum(after.values()) == sum(before.values()) + added > sum(before.values())
    assert errors == [] and [line for line in console if line.startswith(("error", "warning"))] == []
    assert any(url.endswith("/static/vendor/chart.umd.min.js") for url in requests)
    assert any("/api/panels" in url for url in requests)
    assert [url for url in requests if urlsplit(url).scheme != "data" and urlsplit(url).netloc.rsplit(":", 1)[0]
            not in LOOPBACK] == []
    assert (tmp_path / "page.png").stat().st_size > 50_000


def test_dev_prints_the_page_address_and_serves_live_panels(tmp_path):
    """`kern-telemetry dev` (`make run`): the printed page answers, its panels fill from the load generator.
    A previous run's ClickHouse data moves aside (the broker starts empty: both start fresh), and the page
    says since when its data runs. The page's access log goes to a file, without user agents, not to the
    terminal."""
    env = {**os.environ, "KERN_WEB_PORT": str(free_port()), "COLUMNS": "200"}
    env.pop("KERN_CLICKHOUSE_DSN", None)
    (tmp_path / ".kern" / "chdb").mkdir(parents=True)
    (tmp_path / ".kern" / "chdb" / "previous-run").write_text("a ledger of a log the broker no longer has")
    started_ms = time.time() * 1000
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "dev", "--rate", "300",
                                    "--port", str(free_port()), "--clickhouse-port", str(free_port()),
                                    "--page-port", str(free_port()), "--refresh", "60"],
                                   cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (match := re.search(r"page: (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = match[1]
        empty = [panel.name for panel in PANELS]
        while empty:
            assert process.poll() is None and time.monotonic() < deadline, (empty, log.read_text()[-3000:])
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"{url}api/panels?range=900", timeout=30) as response:
                    answer = json.load(response)
            except OSError:  # the page starts with the worker, right after the address is printed
                continue
            assert [p["name"] for p in answer["panels"]] == [panel.name for panel in PANELS]
            assert [p["error"] for p in answer["panels"] if "error" in p] == []
            empty = [p["name"] for p in answer["panels"] if not p["rows"]]
        assert started_ms <= answer["data_since_ms"] <= time.time() * 1000
        assert (tmp_path / ".kern" / "chdb.previous" / "previous-run").exists()
        assert not (tmp_path / ".kern" / "chdb" / "previous-run").exists()
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"/static/vendor/chart.umd.min.js" in response.read()
        access = (tmp_path / ".kern" / "page-access.log").read_text()
        assert "GET /api/panels?range=900 HTTP/1.1\" 200" in access and "urllib" not in access
        assert "/api/panels" not in log.read_text()
    finally:
        stop(process, timeout=30)
