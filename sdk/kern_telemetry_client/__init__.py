"""Kern usage telemetry for SDKs: the event contract and the values it admits."""
