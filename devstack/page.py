"""The page of `make run`: every analysts' panel (`pipeline/panels.py`) as a live chart, on one port, with
the panels' filters and breakdowns as controls.

The page's address holds what is shown (`?range=3600&provider=openai&by=model`, or `from=...&to=...`), and
the browser asks `/api/panels` with the same query once per refresh: the server runs each panel's plain SQL
(filter values as bound parameters) and answers its rows, with the range, the bucket and what each panel
ignores or cannot hold. `/api/csv?panel=NAME&...` answers one panel's rows as CSV. Chart.js draws them:
its built file is vendored in `devstack/web/vendor/` (`make vendor-chartjs` fetches it from the npm
registry), so the page requests nothing from any other host. `python -m devstack.page` serves it over
whatever ClickHouse the KERN_* settings name (the compose cluster's too)."""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import mode
from aiohttp import web
from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from pipeline import render
from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.panels import (
    BREAKDOWNS,
    BY_NAME,
    DEFAULT_RANGE_S,
    FILTERS,
    PANELS,
    SHARE,
    TIME_SERIES,
    Panel,
    Selection,
    Window,
    interval_label,
    options_statement,
)
from tables.ddl import SchemaOptions

WEB = Path(__file__).with_name("web")
PAGE_REFRESH_S = 5.0
OPTIONS_TTL_S = 30.0  # the filters' values (over every day's data) are asked again after this
ACCESS_LOG_FORMAT = '%a %t "%r" %s %b %Tf'  # no user agent or referrer


def _x(value) -> int | str:
    """A time as epoch milliseconds (stored times are UTC), a label as it is."""
    return calendar.timegm(value.utctimetuple()) * 1000 if isinstance(value, datetime) else value


def _epoch(text: str) -> int:
    moment = datetime.fromisoformat(text)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def window_of(query) -> Window:
    """`range=SECONDS` (up to now), `range=today`, or `from=ISO&to=ISO` (UTC)."""
    try:
        if "from" in query:
            return Window.between(_epoch(query["from"]), _epoch(query["to"]) if query.get("to") else int(time.time()))
        if query.get("range") == "today":
            return Window.today()
        return Window.last(max(int(query.get("range", DEFAULT_RANGE_S)), 60))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"range: seconds, today, or from and to in ISO 8601 ({exc})") from None


def selection_of(query) -> Selection:
    try:
        return Selection.parse(
            ((f.name, value) for f in FILTERS for value in query.getall(f.name, ())), query.get("by")
        )
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def axis_title(panel: Panel, window: Window) -> str:
    """What a value is: `runs per 5 min`, `share of agent and team runs`."""
    if panel.unit == SHARE:
        return f"share of {panel.measure}"
    return f"{panel.measure} per {interval_label(window.interval)}" if panel.chart == TIME_SERIES else panel.measure


def create_app(
    settings: Settings, refresh_s: float = PAGE_REFRESH_S, data_since_s: float | None = None
) -> web.Application:
    """`data_since_s`: when the data began (the embedded stack's start: its ClickHouse starts empty with
    its broker), said on the page; its first buckets are partial."""
    client = None
    one_at_a_time = asyncio.Lock()  # one ClickHouse session: its queries run in turn
    database, retention = settings.clickhouse_database, SchemaOptions.from_settings(settings)
    options: dict[str, list] = {}
    options_at = -OPTIONS_TTL_S

    def run(panel: Panel, window: Window, selection: Selection) -> tuple[Sequence[str], Sequence[Sequence]]:
        nonlocal client
        client = client or connect(settings)
        statement = panel.statement(database, window, selection)
        result = client.query(statement.sql, parameters=statement.parameters)
        return result.column_names, result.result_rows

    def run_panels(window: Window, selection: Selection) -> dict:
        nonlocal client, options_at
        client = client or connect(settings)
        if time.monotonic() - options_at > OPTIONS_TTL_S:
            for f in FILTERS:
                try:
                    options[f.name] = [row[0] for row in client.query(options_statement(f, database)).result_rows]
                except ClickHouseError:  # no table yet: no options, the filter still works from the address
                    options[f.name] = []
            options_at = time.monotonic()
        filters = [
            {
                "name": f.name,
                "label": f.label,
                "options": options[f.name],
                "selected": list(selection.filters.get(f.name, ())),
            }
            for f in FILTERS
        ]
        answers = []
        for panel in PANELS:
            answer: dict[str, Any] = {
                "name": panel.name,
                "title": panel.title,
                "description": panel.description,
                "chart": panel.chart,
                "unit": panel.unit,
                "axis": axis_title(panel, window),
                "drill": panel.drill(selection),
                "notes": panel.notes(selection, window, retention),
            }
            try:
                answer["rows"] = [[_x(x), series, value] for x, series, value in run(panel, window, selection)[1]]
            except ClickHouseError as exc:  # one failing panel says why in its card; the others still draw
                answer["error"] = str(exc).splitlines()[0]
            answers.append(answer)
        return {
            "from_ms": window.start * 1000,
            "to_ms": window.end * 1000,
            "now_ms": int(time.time() * 1000),
            "interval_s": window.interval,
            "interval": interval_label(window.interval),
            "refresh_s": refresh_s,
            "data_since_ms": None if data_since_s is None else int(data_since_s * 1000),
            "filters": filters,
            "breakdowns": BREAKDOWNS,
            "by": selection.by,
            "panels": answers,
        }

    async def panels(request: web.Request) -> web.Response:
        window, selection = window_of(request.query), selection_of(request.query)
        async with one_at_a_time:
            answer = await asyncio.to_thread(run_panels, window, selection)
        return web.json_response(answer)

    async def csv(request: web.Request) -> web.Response:
        panel = BY_NAME.get(request.query.get("panel", ""))
        if panel is None:
            raise web.HTTPNotFound(text="panel: one of " + ", ".join(BY_NAME))
        window, selection = window_of(request.query), selection_of(request.query)
        async with one_at_a_time:
            columns, rows = await asyncio.to_thread(run, panel, window, selection)
        columns = columns or ("time" if panel.chart == TIME_SERIES else "label", "series", "value")
        name = f"kern-{panel.name}-{time.strftime('%Y%m%dT%H%M', time.gmtime(window.start))}.csv"
        return web.Response(
            text=render.to_csv(columns, rows),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/panels", panels)
    app.router.add_get("/api/csv", csv)
    app.router.add_static("/static/", WEB)
    return app


def access_logger(path: Path) -> logging.Logger:
    """The page's access log in a file of its own (not the terminal of `make run`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("kern.page.access")
    logger.handlers = [logging.FileHandler(path)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class PageServer(mode.Service):
    """The page as a service of the `dev` app (its event loop, started and stopped with it)."""

    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        refresh_s: float = PAGE_REFRESH_S,
        data_since_s: float | None = None,
        access_log: Path | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.settings, self.host, self.port, self.refresh_s = settings, host, port, refresh_s
        self.data_since_s, self.access_log = data_since_s, access_log
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def on_start(self) -> None:
        self._runner = web.AppRunner(
            create_app(self.settings, self.refresh_s, self.data_since_s),
            access_log=access_logger(self.access_log) if self.access_log else None,
            access_log_format=ACCESS_LOG_FORMAT,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True)
@click.option("--refresh", default=PAGE_REFRESH_S, show_default=True, help="Seconds between the page's refreshes")
@click.option("--access-log", type=click.Path(path_type=Path), help="Write the access log to this file")
def main(host: str, port: int, refresh: float, access_log: Path | None) -> None:
    """Serve the panels page over the ClickHouse of the KERN_* settings."""
    web.run_app(
        create_app(Settings.load(), refresh),
        host=host,
        port=port,
        access_log=access_logger(access_log) if access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        print=lambda _: click.echo(f"page: http://{host}:{port}/"),
    )


if __name__ == "__main__":
    main()
