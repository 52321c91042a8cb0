"""The page of `make run`: every analysts' panel (`pipeline/panels.py`) as a live chart, on one port.

The browser asks `/api/panels?range=SECONDS` once per refresh; the server runs each panel's plain SQL in
turn and answers its rows. Chart.js draws them: its built file is vendored in `devstack/web/vendor/`
(`make vendor-chartjs` fetches it from the npm registry), so the page requests nothing from any other host.
`python -m devstack.page` serves it over whatever ClickHouse the KERN_* settings name (the compose
cluster's too)."""

from __future__ import annotations

import asyncio
import calendar
import logging
from datetime import datetime
from pathlib import Path

import click
import mode
from aiohttp import web

from pipeline.clickhouse import connect
from pipeline.config import Settings
from pipeline.panels import DEFAULT_RANGE_S, PANELS, default_interval

WEB = Path(__file__).with_name("web")
MAX_RANGE_S = 30 * 86400  # the minute tables' retention
PAGE_REFRESH_S = 5.0
ACCESS_LOG_FORMAT = '%a %t "%r" %s %b %Tf'  # no user agent or referrer


def _x(value) -> int | str:
    """A time as epoch milliseconds (stored times are UTC), a label as it is."""
    return calendar.timegm(value.utctimetuple()) * 1000 if isinstance(value, datetime) else value


def create_app(settings: Settings, refresh_s: float = PAGE_REFRESH_S, data_since_s: float | None = None
               ) -> web.Application:
    """`data_since_s`: when the data began (the embedded stack's start: its ClickHouse starts empty with
    its broker), said on the page."""
    client = None
    one_at_a_time = asyncio.Lock()  # one ClickHouse session: its queries run in turn

    def run_panels(range_s: int) -> list[dict]:
        nonlocal client
        client = client or connect(settings)
        answers = []
        for panel in PANELS:
            answer = {"name": panel.name, "title": panel.title, "description": panel.description,
                      "chart": panel.chart, "unit": panel.unit}
            try:
                rows = client.query(panel.plain(settings.clickhouse_database, range_s)).result_rows
                answer["rows"] = [[_x(x), series, value] for x, series, value in rows]
            except Exception as exc:  # one failing panel says why in its card; the others still draw
                answer["error"] = str(exc).splitlines()[0]
            answers.append(answer)
        return answers

    async def panels(request: web.Request) -> web.Response:
        try:
            range_s = min(max(int(request.query.get("range", DEFAULT_RANGE_S)), 60), MAX_RANGE_S)
        except ValueError:
            raise web.HTTPBadRequest(text="range: seconds") from None
        async with one_at_a_time:
            answers = await asyncio.to_thread(run_panels, range_s)
        return web.json_response({"range_s": range_s, "interval_s": default_interval(range_s),
                                  "refresh_s": refresh_s, "panels": answers,
                                  "data_since_ms": None if data_since_s is None else int(data_since_s * 1000)})

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/panels", panels)
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

    def __init__(self, settings: Settings, host: str, port: int, refresh_s: float = PAGE_REFRESH_S,
                 data_since_s: float | None = None, access_log: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.settings, self.host, self.port, self.refresh_s = settings, host, port, refresh_s
        self.data_since_s, self.access_log = data_since_s, access_log
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def on_start(self) -> None:
        self._runner = web.AppRunner(create_app(self.settings, self.refresh_s, self.data_since_s),
                                     access_log=access_logger(self.access_log) if self.access_log else None,
                                     access_log_format=ACCESS_LOG_FORMAT)
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
    web.run_app(create_app(Settings.load(), refresh), host=host, port=port,
                access_log=access_logger(access_log) if access_log else None, access_log_format=ACCESS_LOG_FORMAT,
                print=lambda _: click.echo(f"page: http://{host}:{port}/"))


if __name__ == "__main__":
    main()
