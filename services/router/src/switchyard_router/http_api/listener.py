"""The HTTP front's listener: granian, embedded in the router's own event loop.

granian parses HTTP (1.1 and 2) in Rust and calls the application on the router's
loop (uvloop), beside grpc.aio: one process, one loop, no hop between fronts. It was
measured against aiohttp, uvicorn (httptools) and hypercorn serving the same handler
inside a running uvloop loop; see the README's Measured section. With ``tls`` the
listener uses the same certificate (and client CA, for mutual TLS) as the gRPC one,
and when its files change (a rotated Secret) :meth:`HttpListener.check_certificates`
respawns granian's worker on the same listening socket: new connections get the new
certificate while the old worker finishes the requests it holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.log import LogLevels
from granian.server.embed import Server

from switchyard_common.configfile import ConfigError
from switchyard_common.listener import CertificateFiles, ServerTLSConfig
from switchyard_router.http_api.app import HttpApp

log = logging.getLogger("switchyard.router.http")

_START_TIMEOUT_SECONDS = 10.0
_CONNECT_TIMEOUT_SECONDS = 0.5
_ACCEPTED_TO_START = 3


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"http_listen: expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class HttpListener:
    """Serves an :class:`HttpApp` on ``listen`` until stopped."""

    def __init__(self, app: HttpApp, listen: str, tls: ServerTLSConfig | None) -> None:
        self.listen = listen
        self.host, self.port = _split(listen)
        # granian announces its embedded mode as experimental at every start; the
        # router's own line says where it listens.
        logging.getLogger("_granian").setLevel(logging.ERROR)
        self.scheme = "https" if tls is not None else "http"
        self._server = Server(
            app,
            address=self.host,
            port=self.port,
            interface=Interfaces.RSGI,
            http=HTTPModes.auto,
            websockets=False,
            log_enabled=False,
            log_level=LogLevels.error,
        )
        self._tls: tuple[ServerTLSConfig, CertificateFiles] | None = None
        if tls is not None:
            self._tls = (tls, tls.files())
            self._use_certificates(tls)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Starts serving; ConfigError when the address cannot be bound. Returns once
        a few connections in a row were accepted: just after it binds, granian's
        embedded server may still drop one."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve(), name="http")
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        accepted = 0
        while accepted < _ACCEPTED_TO_START:
            if self._task.done():
                error = self._task.exception()
                raise ConfigError(f"http_listen: cannot serve on {self.listen}: {error}")
            if time.monotonic() > deadline:
                raise ConfigError(f"http_listen: {self.listen} did not start")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(connect_host, self.port), _CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError):
                accepted = 0
                await asyncio.sleep(0.01)
                continue
            writer.close()
            accepted += 1
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Says so when granian stopped serving without being asked (a worker that
        failed, a respawn whose worker could not start): the HTTP port is closed."""
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        log.error("the HTTP front stopped serving on %s: %r", self.listen, error)

    def check_certificates(self) -> bool:
        """Serves new connections with the certificate files' current contents when they
        changed since the last check (and hold a usable certificate; otherwise the last
        good one stays, with an ERROR line); says whether they changed."""
        if self._tls is None or self._task is None or self._task.done():
            return False
        tls, files = self._tls
        if not files.changed():
            return False
        # The worker is respawned (granian's graceful reload: the listening socket
        # stays open) with the files' paths resolved anew.
        self._use_certificates(tls)
        self._server.reload()  # type: ignore[no-untyped-call]
        log.info("HTTP front: certificate files changed; new connections use the new ones")
        return True

    def _use_certificates(self, tls: ServerTLSConfig) -> None:
        """Has granian's next worker serve ``tls``'s files (and ask clients for a
        certificate from its client CA). granian keeps the paths resolved, and a
        Secret mount's resolve to a folder the kubelet deletes on rotation: so this
        runs again before every respawn."""
        ca = tls.client_ca_file
        self._server.build_ssl_context(
            Path(tls.cert_file),
            Path(tls.key_file),
            None,  # no key password
            SSLProtocols.tls12,  # the oldest protocol accepted
            None if ca is None else Path(ca),
            [],  # no revocation lists
            ca is not None,
        )

    async def stop(self, grace: float) -> None:
        """Stops taking connections; lets requests in flight finish within ``grace``."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        self._server.stop()  # type: ignore[no-untyped-call]
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            task.cancel()
        except Exception:  # a worker that failed as it stopped: nothing left to serve
            log.exception("the HTTP listener did not stop cleanly")
