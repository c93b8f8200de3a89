"""Run an ASGI app under uvicorn in a background thread on a loopback port.

Used by ``wacrm demo``, the benchmarks and the tests that need the real HTTP stack. The socket
is bound before the thread starts, so the port is known (and free) at once.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class BackgroundServer:
    def __init__(self, app: Any = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(2048)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, app: Any = None, timeout: float = 10.0) -> BackgroundServer:
        """Serve ``app`` (or the one given at construction). The port is bound already, so
        two servers that must know each other's URL can be built before either starts."""
        app = app if app is not None else self._app
        if app is None:
            raise ValueError("BackgroundServer.start needs an app")
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._server = server = uvicorn.Server(config)
        self._thread = thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"uvicorn-{self.port}",
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"server on {self.url} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.url} did not start in {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
