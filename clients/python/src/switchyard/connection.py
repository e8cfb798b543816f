"""How the command line reaches a server: TLS files and the API key, shared by
every `switchyard` subcommand (`bench` included).

switchyard --target router:443 --tls-ca ca.crt models
switchyard models --tls-ca ca.crt --tls-cert client.crt --tls-key client.key   # mutual TLS
SWITCHYARD_API_KEY=sk-... switchyard generate MODEL "Hello"
switchyard bench --model MODEL --api-key-file /run/secrets/key --tls

The key is read from a file or the environment, never from an option's value,
so it stays out of shell history and process listings.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from switchyard.client import API_KEY_ENV, auth_metadata


class ConnectionOptionsError(ValueError):
    """A connection option that cannot be used (an unreadable file, a key without its cert)."""


@dataclass(frozen=True)
class Connection:
    """TLS credentials (None: plaintext) and the API key (None: none) for a server."""

    credentials: grpc.ChannelCredentials | None = None
    api_key: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata every call sends (``authorization`` when there is a key)."""
        return auth_metadata(self.api_key) if self.api_key else None

    def channel(self, target: str) -> grpc.Channel:
        """A blocking channel to ``target``."""
        if self.credentials is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, self.credentials)

    def aio_channel(self, target: str) -> grpc.aio.Channel:
        """An asyncio channel to ``target``."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(target)
        return grpc.aio.secure_channel(target, self.credentials)


def add_arguments(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    """The connection options. With ``suppress_defaults`` (for a subcommand's copy of
    them) an option left out keeps what was given before the subcommand."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress_defaults else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect over TLS, trusting the system's root certificates",
    )
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=default(None),
        help="connect over TLS, trusting the CA certificates in FILE (PEM)",
    )
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=default(None),
        help="client certificate for mutual TLS (PEM; with --tls-key)",
    )
    group.add_argument(
        "--tls-key",
        metavar="FILE",
        default=default(None),
        help="client private key for mutual TLS (PEM; with --tls-cert)",
    )
    group.add_argument(
        "--api-key-file",
        metavar="FILE",
        default=default(None),
        help=f"file holding the API key sent as a bearer token (default: ${API_KEY_ENV})",
    )


def from_args(args: argparse.Namespace) -> Connection:
    """The connection the parsed options describe; raises ConnectionOptionsError."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConnectionOptionsError("--tls-cert and --tls-key go together (mutual TLS)")
    credentials = None
    if args.tls or args.tls_ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read("--tls-ca", args.tls_ca),
            private_key=_read("--tls-key", args.tls_key),
            certificate_chain=_read("--tls-cert", args.tls_cert),
        )
    if args.api_key_file is not None:
        key = _read("--api-key-file", args.api_key_file)
        api_key = key.decode("utf-8", "replace").strip() if key else None
        if not api_key:
            raise ConnectionOptionsError(f"--api-key-file: {args.api_key_file} is empty")
    else:
        api_key = os.environ.get(API_KEY_ENV) or None
    return Connection(credentials, api_key)


def _read(option: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConnectionOptionsError(f"{option}: cannot read {path}: {error.strerror}") from None
