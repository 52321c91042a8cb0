"""The page of `make run` (`devstack/page.py`) in a real headless Chromium (Debian's, driven by Playwright):
every panel is a chart or a headline number with data, the numbers each holds are its panel's SQL run
directly, the latest point grows as events land and the current bucket is drawn as partial, nothing is
requested from outside loopback, and nothing goes to the console. Filters and the breakdown live in the
page's address and change the SQL and the charts; a click on a bar filters by it; ticks fall on bucket
boundaries; a hidden series stays hidden; each panel downloads as CSV; nothing overflows at 400 px.
`kern-telemetry dev` prints the page's address, serves live panels and keeps its access log in a file."""

from __future__ import annotations

import calendar
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import reference_rollup
from playwright.sync_api import sync_playwright

from devstack.loadgen import EventGenerator
from devstack.processes import free_port, stop, wait_for_port
from pipeline.panels import BY_NAME, PANELS, STAT, TIME_SERIES, Selection, Window

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's; `make test` installs it (a browser download cannot work here)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
CHARTS = [panel for panel in PANELS if panel.chart != STAT]
STATS = [panel for panel in PANELS if panel.chart == STAT]
# Every chart's data points, how many elements Chart.js drew for each dataset, its x ticks and axis titles.
CHART_DATA = """() => Object.fromEntries([...document.querySelectorAll("canvas[data-panel]")].map((canvas) => {
  const chart = Chart.getChart(canvas);
  return [canvas.dataset.panel, {labels: chart.data.labels || [], datasets: chart.data.datasets.map((d, i) => (
    {label: d.label, data: d.data, drawn: chart.getDatasetMeta(i).data.length, visible: chart.isDatasetVisible(i),
     colour: d.borderColor || d.backgroundColor,
     dashed: (d.data.slice(1)).map((_, j) => d.segment ? d.segment.borderDash({p0DataIndex: j, p1DataIndex: j + 1})
                                                        || null : null)})),
    ticks: chart.scales.x.ticks.map((t) => ({value: t.value, label: t.label})), y: chart.options.scales.y.title.text}];
}))"""
STAT_DATA = """() => Object.fromEntries([...document.querySelectorAll("[data-stat]")].map((s) => [s.dataset.stat,
  {current: s.dataset.current, previous: s.dataset.previous, text: s.innerText}]))"""
REFRESHES = "() => Number(document.body.dataset.refreshes || 0)"


def shown(chart: dict, time_series: bool) -> set[tuple]:
    """(x, series, value) of every point a chart holds: x in epoch ms for time series (the value as counted,
    before a partial bucket's projection), else the bar's label."""
    if time_series:
        return {
            (point["x"], dataset["label"], point["value"]) for dataset in chart["datasets"] for point in dataset["data"]
        }
    return {
        (label, dataset["label"], value)
        for dataset in chart["datasets"]
        for label, value in zip(chart["labels"], dataset["data"], strict=True)
        if value is not None
    }


def direct(client, panel, database: str, selection: Selection = Selection(), range_s: int = 3600) -> set[tuple]:
    """The panel's SQL run directly, in the same (x, series, value) form."""
    statement = panel.statement(database, Window.last(range_s), selection)
    rows = client.query(statement.sql, parameters=statement.parameters).result_rows
    return {
        (calendar.timegm(x.utctimetuple()) * 1000 if isinstance(x, datetime) else x, series, value)
        for x, series, value in rows
    }


def stat(client, panel, database: str, selection: Selection = Selection()) -> dict:
    return {label: value for label, _, value in direct(client, panel, database, selection)}


def as_data(value) -> str:
    """A number as the page keeps it in a data attribute."""
    return "null" if value is None else str(value)


@pytest.fixture(scope="module")
def page_url(history, tmp_path_factory):
    """`python -m devstack.page` over the history's ClickHouse, refreshing every second."""
    port = free_port()
    log = tmp_path_factory.mktemp("page") / "page.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.page", "--port", str(port), "--refresh", "1"],
            env={**os.environ, **history.stack.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(process)


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def wait_refreshed(page, times: int = 1) -> None:
    """`times` complete refreshes after now."""
    refreshes = page.evaluate(REFRESHES)
    page.wait_for_function(f"() => Number(document.body.dataset.refreshes || 0) >= {refreshes + times}")


def test_filters_drill_down_and_the_address_hold_the_view(history, page_url, browser):
    """Filters and a breakdown from the address change the SQL and the charts, survive a reload, a click on a
    bar drills down, a hidden series stays hidden, colours follow the series, CSV is the panel's rows, and
    at 400 px wide nothing overflows."""
    stack = history.stack
    errors = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda error: errors.append(str(error)))
    openai = Selection({"provider": ("openai",)}, "model")
    page.goto(f"{page_url}?range=3600&provider=openai&by=model")
    page.wait_for_function(f"() => document.querySelectorAll('canvas[data-panel]').length === {len(CHARTS)}")
    wait_refreshed(page)
    charts = page.evaluate(CHART_DATA)
    with stack.clickhouse() as client:
        for name in ("runs-per-kind", "top-models", "sdk-adoption", "distinct-sessions"):
            expected = direct(client, BY_NAME[name], stack.database, openai)
            assert shown(charts[name], BY_NAME[name].chart == TIME_SERIES) == expected, name
            assert expected != direct(client, BY_NAME[name], stack.database), name  # the filter changed the answer
    models = {d["label"] for d in charts["runs-per-kind"]["datasets"]}
    assert models and all(m.startswith("openai ") or m == "(other)" for m in models)
    assert page.inner_text("#chips") == "Provider: openai ×" and page.input_value("#by") == "model"
    assert page.inner_text("#panel-quality .notes") == "not filtered by provider (quality_minute has none)"

    page.reload()  # the address holds the view
    page.wait_for_function(f"() => document.querySelectorAll('canvas[data-panel]').length === {len(CHARTS)}")
    wait_refreshed(page)
    assert page.inner_text("#chips") == "Provider: openai ×" and page.input_value("#by") == "model"
    assert {d["label"] for d in page.evaluate(CHART_DATA)["runs-per-kind"]["datasets"]} == models

    # a click on the first bar of the top models filters by that model
    top = page.evaluate(CHART_DATA)["top-models"]["labels"][0]
    box = page.locator("canvas[data-panel='top-models']").bounding_box()
    bar = page.evaluate(
        "() => { const e = Chart.getChart(document.querySelector(\"canvas[data-panel='top-models']\"))"
        ".getDatasetMeta(0).data[0]; return {x: e.x, y: (e.y + e.base) / 2}; }"
    )
    page.mouse.click(box["x"] + bar["x"], box["y"] + bar["y"])
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('model') === {json.dumps(top)}")
    wait_refreshed(page)
    assert parse_qs(urlsplit(page.url).query) == {
        "range": ["3600"],
        "provider": ["openai"],
        "by": ["model"],
        "model": [top],
    }
    drilled = Selection({"provider": ("openai",), "model": (top,)}, "model")
    with stack.clickhouse() as client:
        assert shown(page.evaluate(CHART_DATA)["top-models"], False) == direct(
            client, BY_NAME["top-models"], stack.database, drilled
        )
        csv_text = page.evaluate(
            "async () => (await fetch(document.querySelector('#panel-top-models a.csv').href)).text()"
        )
        assert list(csv.reader(io.StringIO(csv_text))) == [
            ["label", "series", "value"],
            *(
                [label, series, str(value)]
                for label, series, value in sorted(direct(client, BY_NAME["top-models"], stack.database, drilled))
            ),
        ]
    page.go_back()  # Back returns to the view before the click
    page.wait_for_function("() => !new URLSearchParams(location.search).has('model')")

    # a series hidden in its legend stays hidden across refreshes; a series keeps its colour across ranges
    page.goto(f"{page_url}?range=3600")
    page.wait_for_function(f"() => document.querySelectorAll('canvas[data-panel]').length === {len(CHARTS)}")
    wait_refreshed(page)
    colours = {d["label"]: d["colour"] for d in page.evaluate(CHART_DATA)["runs-per-kind"]["datasets"]}
    legend = page.evaluate(
        "() => { const c = Chart.getChart(document.querySelector("
        "\"canvas[data-panel='runs-per-kind']\"));"
        " const i = c.legend.legendItems.findIndex((l) => l.text === 'team');"
        " const b = c.legend.legendHitBoxes[i]; return {x: b.left + 4, y: b.top + b.height / 2}; }"
    )
    box = page.locator("canvas[data-panel='runs-per-kind']").bounding_box()
    page.mouse.click(box["x"] + legend["x"], box["y"] + legend["y"])
    wait_refreshed(page, 2)
    visible = {d["label"]: d["visible"] for d in page.evaluate(CHART_DATA)["runs-per-kind"]["datasets"]}
    assert visible == {"agent": True, "team": False, "workflow": True, "os": True}
    page.select_option("#range", "900")
    page.wait_for_function("() => new URLSearchParams(location.search).get('range') === '900'")
    wait_refreshed(page)
    assert {d["label"]: d["colour"] for d in page.evaluate(CHART_DATA)["runs-per-kind"]["datasets"]} == colours
    assert len(set(colours.values())) == len(colours)

    # a filter chosen in its control, then removed with its chip
    page.select_option("select[data-filter='kind']", "workflow")
    page.wait_for_function("() => new URLSearchParams(location.search).get('kind') === 'workflow'")
    wait_refreshed(page)
    assert {d["label"] for d in page.evaluate(CHART_DATA)["runs-per-kind"]["datasets"]} == {"workflow"}
    page.click("#chips .chip")
    page.wait_for_function("() => !new URLSearchParams(location.search).has('kind')")

    page.set_viewport_size({"width": 400, "height": 900})  # a phone: nothing wider than the screen
    wait_refreshed(page)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 400
    assert (
        page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('canvas')].map((c) => c.getBoundingClientRect().right))"
        )
        <= 400
    )
    assert errors == []


def test_the_page_charts_every_panel_with_the_numbers_of_its_sql_live_and_only_from_loopback(
    history, page_url, browser, tmp_path
):
    stack = history.stack
    requests, console, errors = [], [], []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_url)
    page.wait_for_function(
        f"() => document.querySelectorAll('canvas[data-panel]').length === {len(CHARTS)} && "
        f"document.querySelectorAll('[data-stat][data-current]').length === {len(STATS)}"
    )
    charts, stats = page.evaluate(CHART_DATA), page.evaluate(STAT_DATA)
    with stack.clickhouse() as client:
        for panel in CHARTS:
            points = shown(charts[panel.name], panel.chart == TIME_SERIES)
            assert points, f"{panel.name}: the chart has no data"
            assert points == direct(client, panel, stack.database), panel.name
            for dataset in charts[panel.name]["datasets"]:
                assert dataset["drawn"] == len(dataset["data"]), panel.name
        for panel in STATS:
            expected = stat(client, panel, stack.database)
            assert (stats[panel.name]["current"], stats[panel.name]["previous"]) == (
                as_data(expected["current"]),
                as_data(expected["previous"]),
            ), panel.name
    assert (
        charts["runs-per-kind"]["y"] == "runs per minute"
        and charts["provider-share"]["y"] == "share of agent and team runs"
    )
    ticks = charts["runs-per-kind"]["ticks"]  # on minute boundaries, each label once
    assert len(ticks) >= 4 and all(t["value"] % 60_000 == 0 for t in ticks)
    assert len({json.dumps(t["label"]) for t in ticks}) == len(ticks)
    spans_days = isinstance(ticks[0]["label"], list)  # the range touches two days (run near midnight UTC)
    assert spans_days or ticks[0]["value"] // 86_400_000 == ticks[-1]["value"] // 86_400_000
    for index, tick in enumerate(ticks):  # times, UTC; the date under the first and a midnight tick if days change
        moment = datetime.fromtimestamp(tick["value"] / 1000, UTC)
        dated = [moment.strftime("%H:%M"), moment.strftime("%Y-%m-%d")]
        at_a_date = spans_days and (index == 0 or tick["value"] % 86_400_000 == 0)
        assert tick["label"] == (dated if at_a_date else dated[0]), ticks

    def runs_per_time(chart: dict) -> Counter:
        return Counter({x: sum(y for x2, _, y in shown(chart, True) if x2 == x) for x, _, _ in shown(chart, True)})

    before = runs_per_time(charts["runs-per-kind"])
    if not 15 < time.time() % 60 < 40:  # the events below land in the current minute, at least a fifth gone
        time.sleep((75 - time.time() % 60) % 60)
    more = list(EventGenerator(seed=14, timestamp_share=0).events(3_000))
    history.worker.wait_flushed(stack.produce(more))
    added = sum(reference_rollup(stack.settings, more, 0).run_counts().values())
    wait_refreshed(page, 2)  # one whole refresh after the flush
    after_chart = page.evaluate(CHART_DATA)["runs-per-kind"]
    after = runs_per_time(after_chart)
    latest = max(after)
    assert latest >= max(before) and after[latest] > before.get(latest, 0)  # the latest point grew
    assert sum(after.values()) == sum(before.values()) + added > sum(before.values())
    # the current bucket is partial: dashed, and its count projected from the part it covers, never a drop
    agent = next(d for d in after_chart["datasets"] if d["label"] == "agent")
    last = agent["data"][-1]
    assert last["x"] == latest and last["partial"] and 0 < last["covered"] < 60_000
    assert last["y"] == pytest.approx(last["value"] * 60_000 / last["covered"]) and last["y"] > last["value"]
    assert agent["dashed"][-1] == [6, 4] and agent["dashed"][0] is None and not agent["data"][0]["partial"]
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert errors == [] and [line for line in console if line.startswith(("error", "warning"))] == []
    assert any(url.endswith("/static/vendor/chart.umd.min.js") for url in requests)
    assert any("/api/panels" in url for url in requests)
    assert [
        url
        for url in requests
        if urlsplit(url).scheme != "data" and urlsplit(url).netloc.rsplit(":", 1)[0] not in LOOPBACK
    ] == []
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
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "dev",
                "--rate",
                "300",
                "--port",
                str(free_port()),
                "--clickhouse-port",
                str(free_port()),
                "--page-port",
                str(free_port()),
                "--refresh",
                "60",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
            empty = [
                p["name"]
                for p in answer["panels"]
                if not p["rows"]
                or (p["chart"] == STAT and not dict((label, value) for label, _, value in p["rows"])["current"])
            ]
        assert started_ms <= answer["data_since_ms"] <= time.time() * 1000
        assert (tmp_path / ".kern" / "chdb.previous" / "previous-run").exists()
        assert not (tmp_path / ".kern" / "chdb" / "previous-run").exists()
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"/static/vendor/chart.umd.min.js" in response.read()
        access = (tmp_path / ".kern" / "page-access.log").read_text()
        assert 'GET /api/panels?range=900 HTTP/1.1" 200' in access and "urllib" not in access
        assert "/api/panels" not in log.read_text()
    finally:
        stop(process, timeout=30)
