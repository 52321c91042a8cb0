"""The HTTP collector (`kern-telemetry collect`): SDKs outside the Kafka network POST event batches; it
produces each event as one record to the events topic and answers once the broker acknowledged them.
The worker never imports it (`pipeline/cli.py` loads the command by name)."""
