"""The one safe URL fetcher (reference photos, webhook deliveries): no request ever reaches an address it refused.

1. Only ``http``/``https`` URLs without credentials in them.
2. The host is resolved once (``resolve``, injectable: tests answer with the addresses they need) and *every*
   address is checked: loopback, private, link-local, unique-local, site-local, CGNAT, cloud metadata, documentation,
   IPv4-mapped/NAT64/6to4 forms of those, multicast, reserved and unspecified addresses are refused. One bad address
   refuses the host (a DNS answer that mixes a public and a private address is an attack, not an accident).
3. The connection goes to the address that was checked (urllib3 pool on the IP), with the original name in the
   ``Host`` header and, for https, in SNI and certificate verification: a second DNS answer cannot swap it.
4. Redirects are not followed by urllib3: each ``Location`` goes through steps 1-3 again, at most
   ``limits.FETCH_MAX_REDIRECTS`` times (``get``); ``post`` (webhooks) follows none: a 3xx is the receiver's answer.
5. Size and time caps hold while streaming (``Content-Length`` is checked first, then every chunk; one deadline
   covers every hop), and the body is never decompressed (``Accept-Encoding: identity``).
6. ``allowlist`` (setting ``fetch_allowlist``): host names or CIDR networks that may be reached although they are
   not public (tests, private deployments).

Libraries considered: ``advocate`` (unmaintained since 2020, requests 2.x adapters only), ``ssrfguard`` and
``microsoft-antissrf`` (young, no connect-to-the-checked-address for https with SNI); a thin layer over urllib3,
which requests already brings, does exactly the six steps above.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from shared import limits
from shared.errors import ErrorCode, IllustrationsError

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

USER_AGENT: Final = "autobio-illustrations-fetcher/1"
CHUNK: Final = 64 * 1024
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

# Cloud metadata endpoints, named apart from their ranges so the refusal says what they are.
METADATA: Final = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
UNIQUE_LOCAL: Final = ipaddress.ip_network("fc00::/7")
NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
# Not public, yet neither private nor reserved to Python's ``ipaddress`` (3.11), so named here: the deprecated IPv6
# site-local range (RFC 3879; still routed inside some networks) and IPv6's documentation prefix (RFC 9637).
SITE_LOCAL: Final = ipaddress.ip_network("fec0::/10")
DOCUMENTATION_V6: Final = ipaddress.ip_network("3fff::/20")


# Appended to the refusal of an address that is not public, where a person reads it (a 422, the CLI).
ALLOWLIST_HINT: Final = ("; a host that is not public (a private deployment, a test receiver) must be listed in "
                         "the server's ILLUSTRATIONS_FETCH_ALLOWLIST setting (host names or CIDR networks, "
                         "comma-separated)")

# Name lookups bounded in time (``Fetcher.check_resolved``): a few threads, shared by the process, made on demand.
_RESOLVERS: Final = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


class FetchError(IllustrationsError):
    """A URL could not be fetched; ``code`` is the job error code it maps to, the message is safe to show."""

    code: ErrorCode = ErrorCode.REFERENCE_UNREACHABLE


class FetchBlocked(FetchError):
    """The URL names, resolves or redirects to an address that is not public (or is not http(s))."""

    code = ErrorCode.REFERENCE_BLOCKED


class FetchMalformed(FetchBlocked):
    """The URL itself is refused (not http(s), credentials in it, no valid host), whatever it resolves to."""


class FetchUnreachable(FetchError):
    """Network failure, time cap, an answer other than 200, or too many redirects."""

    code = ErrorCode.REFERENCE_UNREACHABLE


class FetchInvalid(FetchError):
    """The body is over the size cap (the content itself is judged by the image checks)."""

    code = ErrorCode.REFERENCE_INVALID


def blocked_kind(address: IPAddress) -> str | None:
    """Why an address may not be reached (``"loopback"``, ``"private"``, ...), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = blocked_kind(embedded)
            return f"ipv4-mapped {inner}" if inner else None
    if address in METADATA:
        return "metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "cgnat"
    if isinstance(address, ipaddress.IPv6Address) and address in UNIQUE_LOCAL:
        return "unique-local"
    if isinstance(address, ipaddress.IPv6Address) and address in SITE_LOCAL:
        return "site-local"
    if isinstance(address, ipaddress.IPv6Address) and address in DOCUMENTATION_V6:
        return "documentation"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written, without brackets, lower-cased
    port: int
    path: str  # path and query
    host_header: str


def parse_url(url: str) -> Target:
    """Split an http(s) URL, refusing other schemes, credentials and hosts that are not names or addresses."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise FetchMalformed("the URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchMalformed("only http and https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise FetchMalformed("URLs with credentials are not fetched")
    host = (parts.hostname or "").lower()
    if not host or any(c in host for c in " /\\%@"):
        raise FetchMalformed("the URL has no valid host")
    default = 443 if scheme == "https" else 80
    port = port or default
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, path, shown if port == default else f"{shown}:{port}")


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, allowlist: Iterable[str] = ()) -> Target:
    """What can be said without resolving (submit time): scheme, syntax, and a literal address's kind."""
    target = parse_url(url)
    address = literal_address(target.host)
    if address is not None and not _allowed(target.host, address, _Allowlist(allowlist)):
        kind = blocked_kind(address)
        if kind:
            raise FetchBlocked(f"the URL names a {kind} address")
    return target


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Allowlist:
    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry)


def _allowed(host: str, address: IPAddress, allowlist: _Allowlist) -> bool:
    return host in allowlist.hosts or any(address in network for network in allowlist.networks)


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None
    url: str


@dataclass(frozen=True)
class Posted:
    status: int
    retry_after: str | None  # the receiver's Retry-After header, as sent


class Fetcher:
    """``Fetcher(...).get(url)`` → the body, or a ``FetchError`` saying why not."""

    def __init__(
        self,
        *,
        allowlist: Iterable[str] = (),
        timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        max_bytes: int = limits.FETCH_MAX_BYTES,
        max_redirects: int = limits.FETCH_MAX_REDIRECTS,
        ca_bundle: str | None = None,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.allowlist = _Allowlist(allowlist)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.ca_bundle = ca_bundle or certifi.where()
        self.resolve = resolve

    @classmethod
    def from_settings(cls, settings: Settings, resolve: Resolver = system_resolve) -> Fetcher:
        return cls(
            allowlist=settings.fetch_allowlist,
            timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            ca_bundle=str(settings.fetch_ca_bundle) if settings.fetch_ca_bundle else None,
            resolve=resolve,
        )

    def get(self, url: str) -> Fetched:
        deadline = time.monotonic() + self.timeout_s
        for _hop in range(self.max_redirects + 1):
            target = parse_url(url)
            addresses = self._addresses(target)
            response = self._open(target, addresses, deadline)
            try:
                if response.status in REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchUnreachable(f"the server answered {response.status} without a Location")
                    url = urljoin(url, location)
                    continue
                if response.status != 200:
                    raise FetchUnreachable(f"the server answered {response.status}")
                data = self._read(response, deadline)
                return Fetched(data, response.headers.get("Content-Type"), url)
            finally:
                response.release_conn()
                response.close()
        raise FetchUnreachable(f"more than {self.max_redirects} redirects")

    # 2. Resolve and check every address.
    def _addresses(self, target: Target) -> list[IPAddress]:
        literal = literal_address(target.host)
        if literal is not None:
            return self._checked(target, [literal])
        try:
            answer = self.resolve(target.host, target.port)
        except (OSError, UnicodeError, ValueError):
            raise FetchUnreachable("the host name does not resolve") from None
        return self._checked(target, answer)

    def _checked(self, target: Target, answer: Sequence[str | IPAddress]) -> list[IPAddress]:
        try:
            candidates = [a if not isinstance(a, str) else ipaddress.ip_address(a.split("%", 1)[0]) for a in answer]
        except ValueError:
            raise FetchUnreachable("the host name does not resolve") from None
        if not candidates:
            raise FetchUnreachable("the host name does not resolve")
        for address in candidates:
            if _allowed(target.host, address, self.allowlist):
                continue
            kind = blocked_kind(address)
            if kind:
                log.info("fetch refused: %s address", kind)
                raise FetchBlocked(f"the URL resolves to a {kind} address")
        return candidates

    def check_resolved(self, url: str, timeout_s: float | None = None) -> None:
        """Steps 1-2 without connecting (a webhook URL at submit): ``FetchBlocked`` when the URL, or any address
        its host resolves to now, may not be reached; ``FetchUnreachable`` when the host does not resolve (within
        ``timeout_s``: a slow resolver must not hold a request)."""
        target = parse_url(url)
        if literal_address(target.host) is not None or timeout_s is None:
            self._addresses(target)
            return
        future = _RESOLVERS.submit(self.resolve, target.host, target.port)
        try:
            answer = future.result(timeout=timeout_s)
        except FutureTimeout:
            raise FetchUnreachable("the host name did not resolve in time") from None
        except (OSError, UnicodeError, ValueError):
            raise FetchUnreachable("the host name does not resolve") from None
        self._checked(target, answer)

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Posted:
        """POST ``body`` (a webhook) to a checked address: steps 1-3, one deadline, no redirect followed (the
        caller sees the 3xx status). The answer's body is not read; only its status and ``Retry-After`` count."""
        deadline = time.monotonic() + self.timeout_s
        target = parse_url(url)
        addresses = self._addresses(target)
        response = self._open(target, addresses, deadline, method="POST", body=body,
                              headers={"Content-Type": "application/json", "Accept": "*/*", **headers})
        try:
            self._drain(response, deadline)  # read a short answer, so the receiver does not see a reset
            return Posted(response.status, response.headers.get("Retry-After"))
        finally:
            response.release_conn()
            response.close()

    # 3. Connect to a checked address, with the name in Host, SNI and certificate checks.
    def _open(self, target: Target, addresses: list[IPAddress], deadline: float, *, method: str = "GET",
              body: bytes | None = None, headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        failure = "the host cannot be reached"
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchUnreachable(f"the fetch took longer than {self.timeout_s:g} s")
            timeout = urllib3.Timeout(connect=min(self.connect_timeout_s, remaining), read=remaining)
            pool: urllib3.HTTPConnectionPool
            if target.scheme == "https":
                server_name = None if literal_address(target.host) else target.host
                pool = urllib3.HTTPSConnectionPool(
                    str(address), target.port, timeout=timeout, retries=False, maxsize=1,
                    cert_reqs="CERT_REQUIRED", ca_certs=self.ca_bundle,
                    server_hostname=server_name, assert_hostname=target.host,
                )
            else:
                pool = urllib3.HTTPConnectionPool(str(address), target.port, timeout=timeout, retries=False,
                                                  maxsize=1)
            try:
                return pool.urlopen(
                    method, target.path, body=body, redirect=False, retries=False, preload_content=False,
                    assert_same_host=False, release_conn=False,
                    headers={"Host": target.host_header, "User-Agent": USER_AGENT, "Accept": "image/*",
                             "Accept-Encoding": "identity", **(headers or {})},
                )
            except Urllib3Error as exc:
                failure = f"the host cannot be reached ({type(exc).__name__})"
                pool.close()
        raise FetchUnreachable(failure)

    def _drain(self, response: urllib3.BaseHTTPResponse, deadline: float, cap: int = 64 * 1024) -> None:
        """Read and drop at most ``cap`` bytes of an answer whose content does not matter (within the deadline)."""
        size = 0
        try:
            while size < cap and deadline > time.monotonic():
                sock = getattr(getattr(response, "connection", None), "sock", None)
                if sock is not None:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = response.read1(CHUNK, decode_content=False)
                if not chunk:
                    return
                size += len(chunk)
        except (Urllib3Error, OSError):
            return  # the status line is what counts

    # 5. Caps while streaming.
    def _read(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchInvalid(f"the file is larger than {self.max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FetchUnreachable(f"the fetch took longer than {self.timeout_s:g} s")
                sock = getattr(getattr(response, "connection", None), "sock", None)
                if sock is not None:
                    sock.settimeout(remaining)  # one slow byte at a time must not outlive the deadline
                chunk = response.read1(CHUNK, decode_content=False)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchInvalid(f"the file is larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        except (ReadTimeoutError, TimeoutError):
            raise FetchUnreachable(f"the fetch took longer than {self.timeout_s:g} s") from None
        except (Urllib3Error, OSError):
            raise FetchUnreachable("the connection failed while reading") from None
        return b"".join(chunks)
