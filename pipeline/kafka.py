"""Kafka connection options from the settings, for aiokafka (worker) and kafka-python (producer side,
admin), and topic creation."""

from __future__ import annotations

import ssl

from pipeline.config import Settings


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    return context


def _sasl(settings: Settings) -> dict:
    if not settings.kafka_security_protocol.startswith("SASL"):
        return {}
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism or "PLAIN",
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None,
    }


def client_options(settings: Settings) -> dict:
    """Connection options both aiokafka and kafka-python accept under the same names."""
    options = {"bootstrap_servers": settings.bootstrap_servers.split(","),
               "security_protocol": settings.kafka_security_protocol, **_sasl(settings)}
    if context := _ssl_context(settings):
        options["ssl_context"] = context
    return options


def create_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the events topic and its DLQ if missing; returns the names created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id="kern-telemetry-admin", request_timeout_ms=int(timeout_s * 1000),
                             **client_options(settings))
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, settings.topic_partitions, settings.topic_replication)
                  for name in (settings.topic, settings.dlq_topic) if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # another worker or the init job won the race
        return [topic.name for topic in wanted]
    finally:
        admin.close()
