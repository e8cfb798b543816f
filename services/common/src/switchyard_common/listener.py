"""How the services listen: TLS (certificate files picked up again when they change)
and per-connection limits.

Servers use gRPC's dynamic server credentials: before each new handshake
gRPC asks :class:`CertificateFiles` for a configuration, and it answers with a
new one only when a file's identity (inode, size, mtime) has changed, so a
rotated Kubernetes Secret (mounted files swapped by symlink) takes effect for
the next connection without a restart. Channels to other servers are built
from the same files; their owner rebuilds them when :meth:`CertificateFiles.changed`
says so. Needs the ``server`` extra (pydantic).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import grpc
import grpc.aio
from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator

from switchyard_common.configfile import ConfigError

log = logging.getLogger("switchyard.tls")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTLSConfig(_Strict):
    """``tls:`` of a listener: its certificate, and optionally the CA clients must use."""

    cert_file: FilePath = Field(description="PEM certificate chain (tls.crt of a Secret)")
    key_file: FilePath = Field(description="PEM private key (tls.key)")
    client_ca_file: FilePath | None = Field(
        default=None,
        description="PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS)",
    )

    @model_validator(mode="after")
    def _usable(self) -> ServerTLSConfig:
        verify(self.cert_file, self.key_file, self.client_ca_file)
        return self

    def files(self) -> CertificateFiles:
        return CertificateFiles(self.cert_file, self.key_file, self.client_ca_file)


class ChannelTLSConfig(_Strict):
    """``tls:`` of a cluster: how the router verifies model servers (and proves itself)."""

    ca_file: FilePath | None = Field(
        default=None, description="PEM CA bundle that signed the servers (unset: system roots)"
    )
    cert_file: FilePath | None = Field(default=None, description="client certificate, for mTLS")
    key_file: FilePath | None = Field(default=None, description="client private key, for mTLS")
    server_name: str | None = Field(
        default=None, description="name to verify in the server's certificate (unset: its host)"
    )

    @model_validator(mode="after")
    def _pair(self) -> ChannelTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (both for mutual TLS, or neither)")
        verify(self.cert_file, self.key_file, self.ca_file)
        return self

    def files(self) -> CertificateFiles:
        return CertificateFiles(self.cert_file, self.key_file, self.ca_file)


class ConnectionLimits(_Strict):
    """``limits:`` that apply to each client connection (HTTP/2 settings)."""

    max_concurrent_streams: int = Field(
        default=4096,
        ge=1,
        description="calls open at once on one connection; HTTP/2 refuses more "
        "(REFUSED_STREAM, which Switchyard's router and SDK send again at once). Sized for "
        "clients that multiplex thousands of calls on one channel: overload is answered by "
        "admission (RESOURCE_EXHAUSTED), not here",
    )
    min_ping_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        description="a client pinging more often than this without sending data gets a "
        "strike; after max_ping_strikes the connection is closed (GOAWAY too_many_pings)",
    )
    max_ping_strikes: int = Field(default=2, ge=0, description="0: never close for pings")

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC server options enforcing these limits."""
        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                int(self.min_ping_interval_seconds * 1000),
            ),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            # Pings with no call open are fine while they respect the interval.
            ("grpc.keepalive_permit_without_calls", 1),
        ]


def bind(server: grpc.aio.Server, listen: str, tls: ServerTLSConfig | None) -> int:
    """Adds the listening port, with TLS when configured; ConfigError naming the
    problem when the certificate files cannot be read or the address not bound."""
    try:
        if tls is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, tls.files().server_credentials())
    except OSError as error:
        raise ConfigError(f"tls: cannot read certificate files: {error}") from None
    except RuntimeError as error:  # grpcio raises where it used to return 0
        raise ConfigError(f"listen: cannot bind {listen}: {error}") from None


def verify(cert_file: Path | None, key_file: Path | None, ca_file: Path | None) -> None:
    """ValueError naming the problem when the files are not a usable certificate, key
    and CA bundle (gRPC itself only says that it failed to bind or to connect)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f"cert_file {cert_file} and key_file {key_file} are not a PEM certificate "
                f"and its private key: {error}"
            ) from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"{ca_file} is not a PEM CA bundle: {error}") from None


def _identity(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    stat = os.stat(path)  # follows the symlinks a Secret mount swaps
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


class CertificateFiles:
    """A certificate, its key and a CA bundle (each optional), read from files."""

    def __init__(self, cert_file: Path | None, key_file: Path | None, ca_file: Path | None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self._seen = self._identities()
        self.cert, self.key, self.ca = self._load()

    def _identities(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_identity(p) for p in (self.cert_file, self.key_file, self.ca_file))

    def _load(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        return _read(self.cert_file), _read(self.key_file), _read(self.ca_file)

    def changed(self) -> bool:
        """Re-reads the files if any changed since the last read; says whether they did.

        A file that cannot be read right now (a Secret mid-swap) counts as unchanged:
        the last good certificates stay in use.
        """
        try:
            now = self._identities()
            if now == self._seen:
                return False
            loaded = self._load()
            verify(self.cert_file, self.key_file, self.ca_file)
        except OSError as error:
            log.warning("cannot read certificate files (%s); keeping the loaded ones", error)
            return False
        except ValueError as error:
            self._seen = now  # said once, not at every handshake
            log.error("new certificate files rejected; keeping the loaded ones: %s", error)
            return False
        self._seen = now
        self.cert, self.key, self.ca = loaded
        log.info("certificate files changed; new connections use the new ones")
        return True

    # Servers.
    def _server_configuration(self) -> grpc.ServerCertificateConfiguration:
        assert self.key is not None and self.cert is not None
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], self.ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate configuration fetcher: None keeps the current one."""
        try:
            return self._server_configuration() if self.changed() else None
        except Exception:  # never let a bad rotation break handshakes
            log.exception("new certificate files rejected; keeping the loaded ones")
            return None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Reloading server credentials; clients need a certificate when a CA is set."""
        return grpc.dynamic_ssl_server_credentials(
            self._server_configuration(),
            self._fetch,  # type: ignore[arg-type]  # None is allowed: "unchanged"
            require_client_authentication=bool(self.ca),
        )

    # Channels.
    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a channel, from the files as last read."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
