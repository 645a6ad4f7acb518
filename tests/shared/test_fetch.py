"""The safe fetcher against real sockets: local HTTP(S) servers, a resolver we answer, a socket that counts connects.

Every refused address is refused before any connection: a listening socket on every local address (dual-stack
``::``) records each connect, and stays at zero.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from shared.fetch import (
    FetchBlocked,
    Fetcher,
    FetchInvalid,
    FetchUnreachable,
    blocked_kind,
    check_url,
)
from tests.httpservers import Recorder, Route, Server


def resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, _port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return table[host]

    return resolve


BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.9.9.9", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - the address under test, not a bind
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("100.64.0.1", "cgnat"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "site-local"),  # deprecated (RFC 3879), still routed inside some networks
    ("feff:ffff::1", "site-local"),
    ("3fff::1", "documentation"),  # RFC 9637
    ("::ffff:127.0.0.1", "ipv4-mapped loopback"),
    ("::ffff:10.0.0.1", "ipv4-mapped private"),
    ("::ffff:169.254.169.254", "ipv4-mapped metadata"),
    ("64:ff9b::7f00:1", "ipv4-mapped loopback"),
    ("2002:7f00:1::", "ipv4-mapped loopback"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
]


@pytest.mark.parametrize(("address", "kind"), BLOCKED)
def test_every_kind_of_address_is_named(address: str, kind: str) -> None:
    assert blocked_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert blocked_kind(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "kind"), BLOCKED)
def test_dns_answering_a_blocked_address_is_refused_without_connecting(recorder: Recorder, address: str,
                                                                       kind: str) -> None:
    fetcher = Fetcher(resolve=resolver({"photos.test": [address]}), timeout_s=5)
    with pytest.raises(FetchBlocked, match=kind):
        fetcher.get(f"http://photos.test:{recorder.port}/grandma.png")
    assert recorder.connections == 0


def test_literal_blocked_addresses_are_refused_before_resolving(recorder: Recorder) -> None:
    fetcher = Fetcher(resolve=resolver({}))
    for url in (f"http://127.0.0.1:{recorder.port}/a.png", f"http://[::1]:{recorder.port}/a.png",
                f"http://[::ffff:127.0.0.1]:{recorder.port}/a.png", f"https://0.0.0.0:{recorder.port}/a.png"):
        with pytest.raises(FetchBlocked):
            fetcher.get(url)
        with pytest.raises(FetchBlocked):
            check_url(url)
    assert recorder.connections == 0


def test_the_recorder_does_see_a_connection_that_is_allowed(recorder: Recorder) -> None:
    """The control: the same socket counts a connect when the address is allowlisted."""
    fetcher = Fetcher(resolve=resolver({"photos.test": ["127.0.0.1"]}), allowlist=["127.0.0.0/8"], timeout_s=5)
    with pytest.raises(FetchUnreachable):
        fetcher.get(f"http://photos.test:{recorder.port}/a.png")
    assert recorder.connections == 1


def test_one_private_address_among_public_ones_refuses_the_host(recorder: Recorder) -> None:
    fetcher = Fetcher(resolve=resolver({"mixed.test": ["93.184.215.14", "127.0.0.1"]}))
    with pytest.raises(FetchBlocked, match="loopback"):
        fetcher.get(f"http://mixed.test:{recorder.port}/a.png")
    assert recorder.connections == 0


def test_a_redirect_to_loopback_is_refused_without_connecting(recorder: Recorder) -> None:
    server = Server({
        "/to-loopback": (302, {"Location": f"http://127.0.0.1:{recorder.port}/secret"}, b""),
        "/to-private-name": (301, {"Location": f"http://intranet.test:{recorder.port}/secret"}, b""),
        "/to-mapped": (307, {"Location": f"http://[::ffff:127.0.0.1]:{recorder.port}/secret"}, b""),
    })
    try:
        fetcher = Fetcher(allowlist=["allowed.test"], resolve=resolver({
            "allowed.test": ["127.0.0.1"], "intranet.test": ["10.0.0.8"]}))
        base = f"http://allowed.test:{server.port}"
        for path in ("/to-loopback", "/to-private-name", "/to-mapped"):
            with pytest.raises(FetchBlocked):
                fetcher.get(base + path)
        assert recorder.connections == 0
        assert [path for path, _ in server.requests] == ["/to-loopback", "/to-private-name", "/to-mapped"]
        assert server.requests[0][1] == f"allowed.test:{server.port}"  # the name travels in Host
    finally:
        server.close()


def test_redirects_are_followed_three_times_and_no_more() -> None:
    routes: dict[str, Route] = {f"/r{i}": (302, {"Location": f"/r{i + 1}"}, b"") for i in range(5)}
    routes["/r3"] = (200, {"Content-Type": "image/png"}, b"three")
    server = Server(routes)
    try:
        fetcher = Fetcher(allowlist=["127.0.0.1/32"])
        fetched = fetcher.get(f"http://127.0.0.1:{server.port}/r0")
        assert fetched.data == b"three"
        assert fetched.url.endswith("/r3")
        assert fetched.content_type == "image/png"
        routes["/r3"] = (302, {"Location": "/r4"}, b"")
        with pytest.raises(FetchUnreachable, match="more than 3 redirects"):
            fetcher.get(f"http://127.0.0.1:{server.port}/r0")
    finally:
        server.close()


def _chunked(size: int) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def send(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        block = b"x" * 1000
        for _ in range(size // 1000):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        handler.wfile.write(b"0\r\n\r\n")

    return send


def _trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        try:
            handler.wfile.write(b"x")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.05)  # the server side of the test: a slow peer, not a wait in the test


def test_size_and_time_caps_hold_while_streaming() -> None:
    server = Server({
        "/declared": (200, {"Content-Length": "5000"}, b"y" * 5000),
        "/chunked": _chunked(20_000),
        "/small": (200, {}, b"z" * 900),
        "/slow": _trickle,
        "/missing": (404, {}, b"no"),
    })
    try:
        fetcher = Fetcher(allowlist=["127.0.0.1"], max_bytes=1000, timeout_s=1.0)
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(FetchInvalid, match="larger than 1000 bytes"):
            fetcher.get(base + "/declared")
        with pytest.raises(FetchInvalid, match="larger than 1000 bytes"):
            fetcher.get(base + "/chunked")
        assert fetcher.get(base + "/small").data == b"z" * 900
        started = time.monotonic()
        with pytest.raises(FetchUnreachable, match="longer than 1 s"):
            fetcher.get(base + "/slow")
        assert time.monotonic() - started < 3
        with pytest.raises(FetchUnreachable, match="404"):
            fetcher.get(base + "/missing")
    finally:
        server.close()


def test_malformed_urls_and_other_schemes_are_refused() -> None:
    fetcher = Fetcher(resolve=resolver({}))
    for url in ("ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "http://user:pw@example.com/a.png",
                "http:///nohost", "http://exa mple.com/", "http://example.com:99999/", "javascript:alert(1)"):
        with pytest.raises(FetchBlocked):
            fetcher.get(url)
    with pytest.raises(FetchUnreachable, match="does not resolve"):
        fetcher.get("http://nowhere.test/a.png")


def test_https_connects_to_the_checked_address_and_verifies_the_name(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("photos.test").configure_cert(context)
    server = Server({"/a.png": (200, {"Content-Type": "image/png"}, b"png-bytes")}, tls=context)
    try:
        table = {"photos.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
        fetcher = Fetcher(allowlist=["photos.test", "other.test"], ca_bundle=str(ca_file), resolve=resolver(table))
        assert fetcher.get(f"https://photos.test:{server.port}/a.png").data == b"png-bytes"
        assert server.requests[-1][1] == f"photos.test:{server.port}"
        # Same address, another name: the certificate does not match it, so nothing is read.
        with pytest.raises(FetchUnreachable):
            fetcher.get(f"https://other.test:{server.port}/a.png")
        # And an unknown CA is refused.
        with pytest.raises(FetchUnreachable):
            Fetcher(allowlist=["photos.test"], resolve=resolver(table)).get(f"https://photos.test:{server.port}/a.png")
    finally:
        server.close()
