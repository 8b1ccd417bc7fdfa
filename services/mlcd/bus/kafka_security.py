"""How every Kafka client mlcd makes authenticates and encrypts: SASL (PLAIN, SCRAM-SHA-256/512) and TLS.

`client_options(settings)` is the set of aiokafka keyword arguments the producer, the consumers and the
admin client all take (`KafkaBus(security=...)`), so no client can connect differently from the others.
"""

from __future__ import annotations

import ssl
from typing import Any

from mlcd.config import Settings
from mlcd.errors import ConfigError


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's security arguments from the MLCD_KAFKA_* settings; ConfigError if TLS files are unusable."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _tls_context(settings)
    if protocol.startswith("SASL_"):
        assert settings.kafka_sasl_password is not None  # the settings refuse SASL without one
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def _tls_context(settings: Settings) -> ssl.SSLContext:
    from aiokafka.helpers import create_ssl_context

    password = settings.kafka_ssl_key_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None,
            certfile=str(settings.kafka_ssl_cert_file) if settings.kafka_ssl_cert_file else None,
            keyfile=str(settings.kafka_ssl_key_file) if settings.kafka_ssl_key_file else None,
            password=password.get_secret_value() if password else None,
        )
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"invalid MLCD_* settings: kafka TLS files cannot be used: {e}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context
