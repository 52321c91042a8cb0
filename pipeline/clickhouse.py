"""The ClickHouse client for the configured DSN: a server over HTTP(S), or the embedded chDB engine."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver import options
from clickhouse_connect.driver.client import Client

from pipeline.config import Settings


def connect(settings: Settings) -> Client:
    _without_dataframes()
    dsn = settings.clickhouse_dsn
    if settings.embedded_clickhouse:
        Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=dsn)
    # clickhouse-connect reads TLS from the port (443/8443), not from an https:// scheme: pass it on.
    options: dict = {"dsn": dsn, "interface": urlsplit(dsn).scheme, "connect_timeout": 10, "send_receive_timeout": 60}
    if settings.clickhouse_user:
        options["username"] = settings.clickhouse_user
    if settings.clickhouse_password:
        options["password"] = settings.clickhouse_password.get_secret_value()
    if settings.clickhouse_ca_cert:
        options["ca_cert"] = str(settings.clickhouse_ca_cert)
    return clickhouse_connect.get_client(**options)


def _without_dataframes() -> None:
    """clickhouse-connect imports pandas (and with it numpy and pyarrow) on a process's first insert, only to
    ask whether the rows are a DataFrame; ours are lists, and those libraries cost a worker writing over
    HTTP ~100 MB of its RSS (chDB installs them). Resolved as absent, they are never imported."""
    options.pd = options.pd_time_test = options.np = None
