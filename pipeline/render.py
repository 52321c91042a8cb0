"""Query results for people and for other tools (`kern-telemetry query`): a table, CSV, a JSON array of
objects, or a panel drawn in the terminal (plotext). Times are UTC, as stored; in CSV and JSON they are
ISO 8601 with the zone."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.table import Table

from pipeline.panels import TIME_SERIES, Panel


def _value(value):
    """A cell as plain data: times in ISO 8601 (UTC), everything else as the driver returned it."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value


def _text(value) -> str:
    value = _value(value)
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list | tuple) else str(value)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence]) -> Table:
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*(_text(value) for value in row))
    return result


def to_csv(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_text(value) for value in row] for row in rows)
    return out.getvalue()


def to_json(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A JSON array of objects, one per row."""
    return json.dumps([{column: _value(value) for column, value in zip(columns, row, strict=True)} for row in rows])


def chart(panel: Panel, rows: Sequence[Sequence], width: int, height: int, color: bool) -> str:
    """The panel's rows (x, series, value) drawn as text: a line per series over time, or bars per label."""
    import plotext as plt

    series: dict[str, dict] = {}
    for x, name, value in rows:
        series.setdefault(name, {})[x] = value
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.title(panel.title)
    if panel.chart == TIME_SERIES:
        plt.date_form("Y-m-d H:M:S", "Y-m-d H:M")  # ISO 8601, UTC as stored
        for name, points in series.items():
            plt.plot([x.strftime("%Y-%m-%d %H:%M:%S") for x in points], list(points.values()), label=name)
    else:
        labels = list(dict.fromkeys(x for x, _, _ in rows))
        values = [[points.get(label, 0) for label in labels] for points in series.values()]
        if len(values) == 1:
            plt.bar(labels, values[0])
        else:
            plt.multiple_bar(labels, values, labels=list(series))
    text = plt.build()
    return text if color else plt.uncolorize(text)
