"""Kern telemetry rollup pipeline: Kafka -> Faust worker -> ClickHouse aggregates."""

__version__ = "0.1.0"
