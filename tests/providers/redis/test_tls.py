"""The Redis provider over TLS (``rediss://``), against Debian's redis-server built with TLS.

The certificates are made here with the openssl CLI: a CA, a server certificate
for the IP 127.0.0.1 and a client certificate signed by it, and a stranger CA
(with a client certificate of its own) that the server does not know. Each
server speaks TLS on its TLS port and plain RESP on its other port, through
which a raw client looks behind the provider's back. Refused clients must meet
:class:`~unistore.StorageConnectionError` with the cause chained, never a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from unistore import ItemNotFoundError, StorageConnectionError, StorageProvider, StorageQuery, open_provider
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout

#: How long a refused connection may take before the test calls it a hang: each
#: attempt is bounded by the URL's timeouts, and the provider's retry makes four of them.
REFUSAL_SECONDS = 15

CA_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
# The server is reached as 127.0.0.1: the name it is checked against is an IP SAN.
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
CLIENT_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


# -- certificates ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Certificates:
    """The test's own public-key infrastructure."""

    ca: KeyPair
    server: KeyPair
    client: KeyPair
    stranger_ca: KeyPair
    stranger_client: KeyPair  # signed by the stranger CA


def _openssl(*arguments: str | Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl CLI is not installed: apt-get install -y openssl")
    done = subprocess.run([binary, *map(str, arguments)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, arguments))} failed:\n{done.stderr}")


def _issue(directory: Path, name: str, subject: str, extensions: str, issuer: KeyPair | None = None) -> KeyPair:
    """A new P-256 key and a certificate for it, for ``subject``, signed by ``issuer``
    (self-signed without one), as ``name.pem`` and ``name.key`` in ``directory``."""
    pair = KeyPair(directory / f"{name}.pem", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    extfile = directory / f"{name}.ext"
    extfile.write_text(extensions)
    _openssl(
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", pair.key, "-out", request, "-subj", f"/CN={subject}"),
    )
    signing = ("-signkey", pair.key) if issuer is None else ("-CA", issuer.cert, "-CAkey", issuer.key)
    _openssl(
        *("x509", "-req", "-in", request, "-out", pair.cert, "-days", "2", "-sha256"),
        *("-set_serial", str(uuid.uuid4().int), "-extfile", extfile, *signing),
    )
    return pair


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue(directory, "ca", "unistore test CA", CA_EXTENSIONS)
    stranger_ca = _issue(directory, "stranger-ca", "stranger CA", CA_EXTENSIONS)
    return Certificates(
        ca=ca,
        server=_issue(directory, "server", "127.0.0.1", SERVER_EXTENSIONS, ca),
        client=_issue(directory, "client", "unistore test client", CLIENT_EXTENSIONS, ca),
        stranger_ca=stranger_ca,
        stranger_client=_issue(directory, "stranger-client", "stranger client", CLIENT_EXTENSIONS, stranger_ca),
    )


# -- servers ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TlsServer:
    """A private redis-server: TLS on ``tls_port``, plain RESP on ``plain_port``."""

    plain_port: int
    tls_port: int

    def url(self, *, scheme: str = "rediss", port: int | None = None, **options: str | Path | None) -> str:
        """A URL of this server (its TLS port unless ``port``), in a namespace of its own,
        with the ``options`` that are not None."""
        given = {name: str(value) for name, value in options.items() if value is not None}
        query = urlencode({"namespace": uuid.uuid4().hex, **given})
        return f"{scheme}://127.0.0.1:{self.tls_port if port is None else port}/0?{query}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _require_tls(server: TlsServer, certificates: Certificates) -> None:
    """Fail (never skip) unless the server answers a PING over TLS on its TLS port."""
    client = redis.Redis(
        host="127.0.0.1",  # the name the certificate is for
        port=server.tls_port,
        ssl=True,
        ssl_ca_certs=str(certificates.ca.cert),
        ssl_certfile=str(certificates.client.cert),
        ssl_keyfile=str(certificates.client.key),
        socket_timeout=5,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"redis-server does not speak TLS on --tls-port {server.tls_port}; is it built with TLS? ({exc})")
    finally:
        client.close()


@pytest.fixture
def serve_tls(
    redis_starter: Callable[..., tuple[subprocess.Popen[bytes], int]], tmp_path: Path, certificates: Certificates
) -> Iterator[Callable[..., TlsServer]]:
    """Starts redis-servers that speak TLS with the test's certificates, requiring a
    client certificate if ``client_certificates``; stops them after the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def serve(*, client_certificates: bool = False) -> TlsServer:
        workdir = tmp_path / f"redis{len(processes)}"
        workdir.mkdir()
        tls_port = _free_port()
        options = (
            *("--tls-port", str(tls_port)),
            *("--tls-cert-file", str(certificates.server.cert), "--tls-key-file", str(certificates.server.key)),
            *("--tls-ca-cert-file", str(certificates.ca.cert)),
            *("--tls-auth-clients", "yes" if client_certificates else "no"),
        )
        try:
            process, plain_port = redis_starter(workdir, None, *options)
        except pytest.fail.Exception as exc:
            pytest.fail(f"redis-server did not start with --tls-port: is it built with TLS? ({exc})")
        processes.append(process)
        server = TlsServer(plain_port, tls_port)
        _require_tls(server, certificates)
        return server

    yield serve
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


# -- what the tests share -----------------------------------------------------------


async def _round_trip(provider: RedisStorageProvider, raw: redis.Redis) -> None:
    """Save, load, search by tag and delete through ``provider``, and clean it up;
    ``raw``, a plain client of the same server, sees the record come and go."""
    try:
        record_key = layout.record_key(layout.shard_prefix(provider.namespace.encode(), 0, 1), b"greeting")
        saved = await provider.save("greeting", {"text": "hello"}, "note", tags={"via": "tls"})
        assert saved.data == {"text": "hello"}
        assert raw.exists(record_key) == 1  # in the server behind the TLS port
        assert (await provider.load("greeting")).data == {"text": "hello"}
        found = [result.item async for result in provider.search(StorageQuery(tags={"via": "tls"}))]
        assert [(item.metadata.key, item.data) for item in found] == [("greeting", {"text": "hello"})]
        assert [result async for result in provider.search(StorageQuery(tags={"via": "plain"}))] == []
        assert await provider.delete("greeting") is True
        assert raw.exists(record_key) == 0
        with pytest.raises(ItemNotFoundError):
            await provider.load("greeting")
    finally:
        await provider.cleanup()


async def _refusal(provider: StorageProvider[Any], *fragments: str) -> StorageConnectionError:
    """The error ``provider``'s first operation meets (within REFUSAL_SECONDS: a hang
    fails), its message naming each of ``fragments``; the provider is cleaned up."""
    try:
        with pytest.raises(StorageConnectionError) as caught:
            await asyncio.wait_for(provider.load("greeting"), REFUSAL_SECONDS)
    finally:
        await provider.cleanup()
    message = str(caught.value)
    for fragment in ("Redis is unreachable", *fragments):
        assert fragment in message
    assert isinstance(caught.value.__cause__, redis.RedisError)
    return caught.value


# -- TLS with a server certificate -----------------------------------------------------


@pytest.mark.redis
async def test_a_rediss_url_saves_loads_searches_and_deletes_over_tls(
    serve_tls: Callable[..., TlsServer], certificates: Certificates
) -> None:
    server = serve_tls()
    provider = open_provider(server.url(ssl_ca_certs=certificates.ca.cert))
    assert isinstance(provider, RedisStorageProvider)
    with redis.Redis(port=server.plain_port) as raw:
        await _round_trip(provider, raw)


@pytest.mark.redis
async def test_the_seed_mapping_with_ssl_works_the_same(
    serve_tls: Callable[..., TlsServer], certificates: Certificates
) -> None:
    server = serve_tls()
    provider = RedisStorageProvider(
        {
            "host": "127.0.0.1",
            "port": server.tls_port,
            "ssl": True,
            "ssl_ca_certs": str(certificates.ca.cert),
            "namespace": uuid.uuid4().hex,
        }
    )
    with redis.Redis(port=server.plain_port) as raw:
        await _round_trip(provider, raw)


@pytest.mark.redis
@pytest.mark.parametrize("trusted", ["system store", "stranger CA"])
async def test_a_client_that_does_not_trust_the_server_ca_is_refused(
    serve_tls: Callable[..., TlsServer], certificates: Certificates, trusted: str
) -> None:
    server = serve_tls()
    ca = None if trusted == "system store" else certificates.stranger_ca.cert
    error = await _refusal(
        open_provider(server.url(ssl_ca_certs=ca)), f"127.0.0.1:{server.tls_port}", "certificate verify failed"
    )
    assert isinstance(error.__cause__, redis.ConnectionError)
    # The control: the same client, told not to verify, is let in; so it was the verification that refused.
    unverified = open_provider(server.url(ssl_ca_certs=ca, ssl_cert_reqs="none"))
    try:
        assert await unverified.load_many(["greeting"]) == {}
    finally:
        await unverified.cleanup()


@pytest.mark.redis
async def test_plain_redis_to_the_tls_port_is_refused_not_hung(serve_tls: Callable[..., TlsServer]) -> None:
    server = serve_tls()
    await _refusal(open_provider(server.url(scheme="redis", socket_timeout="1")), f"127.0.0.1:{server.tls_port}")


@pytest.mark.redis
async def test_rediss_to_a_plain_port_is_refused_not_hung(
    serve_tls: Callable[..., TlsServer], certificates: Certificates
) -> None:
    # The plain port reads the TLS hello as the start of an inline command and waits
    # for its end: only the connect timeout ends the handshake (four attempts of it).
    server = serve_tls()
    url = server.url(port=server.plain_port, ssl_ca_certs=certificates.ca.cert, socket_connect_timeout="0.5")
    error = await _refusal(open_provider(url))
    assert isinstance(error.__cause__, redis.TimeoutError)


# -- mutual TLS ----------------------------------------------------------------------


@pytest.mark.redis
async def test_mutual_tls_admits_a_client_certificate_signed_by_the_ca(
    serve_tls: Callable[..., TlsServer], certificates: Certificates
) -> None:
    server = serve_tls(client_certificates=True)
    client = certificates.client
    url = server.url(ssl_ca_certs=certificates.ca.cert, ssl_certfile=client.cert, ssl_keyfile=client.key)
    provider = open_provider(url)
    assert isinstance(provider, RedisStorageProvider)
    with redis.Redis(port=server.plain_port) as raw:
        await _round_trip(provider, raw)
        mapping = RedisStorageProvider(
            host="127.0.0.1",
            port=server.tls_port,
            ssl=True,
            ssl_ca_certs=str(certificates.ca.cert),
            ssl_certfile=str(client.cert),
            ssl_keyfile=str(client.key),
            namespace=uuid.uuid4().hex,
        )
        await _round_trip(mapping, raw)


@pytest.mark.redis
@pytest.mark.parametrize("certificate", ["none", "stranger's"])
async def test_mutual_tls_refuses_a_client_without_a_certificate_the_server_trusts(
    serve_tls: Callable[..., TlsServer], certificates: Certificates, certificate: str
) -> None:
    server = serve_tls(client_certificates=True)
    pair = None if certificate == "none" else certificates.stranger_client
    url = server.url(
        ssl_ca_certs=certificates.ca.cert,
        ssl_certfile=None if pair is None else pair.cert,
        ssl_keyfile=None if pair is None else pair.key,
    )
    # The client finishes its side of a TLS 1.3 handshake before the server checks
    # its certificate: the refusal comes as an alert or a reset on the first read.
    error = await _refusal(open_provider(url), f"127.0.0.1:{server.tls_port}")
    assert isinstance(error.__cause__, redis.ConnectionError)
    with redis.Redis(port=server.plain_port) as raw:
        assert raw.dbsize() == 0  # nothing reached the server
