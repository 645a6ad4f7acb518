"""Real servers for the fetcher's tests: an HTTP(S) server answering from a route table, a route that holds its
answer until released, a socket counting connects."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Callable

Route = tuple[int, dict[str, str], bytes] | Callable[[http.server.BaseHTTPRequestHandler], None]


class Server:
    """A real HTTP server on 127.0.0.1 answering from a route table (optionally over TLS)."""

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Host", "")))
                route = outer.routes.get(self.path, (404, {}, b"missing"))
                if callable(route):
                    route(self)
                    return
                status, headers, body = route
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, *_: object) -> None:  # a client that hung up on purpose (caps, refusals)
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Held:
    """A route that answers only once released: a fetch in flight, held for as long as a test needs.

    ``arrived`` is set when a request is waiting; ``release()`` lets every waiting and later request through.
    A held request gives up after ``limit_s`` (a test that never releases must not hang its server thread).
    """

    def __init__(self, body: bytes, content_type: str = "image/png", limit_s: float = 60) -> None:
        self.body, self.content_type, self.limit_s = body, content_type, limit_s
        self.arrived = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __call__(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.arrived.set()
        if not self._released.wait(self.limit_s):
            handler.send_error(504)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Content-Length", str(len(self.body)))
        handler.end_headers()
        handler.wfile.write(self.body)


class Recorder:
    """Listens on every local address (IPv4 through a dual-stack IPv6 socket) and counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()
