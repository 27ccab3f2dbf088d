"""Fetching an image by URL for /search/image without becoming a proxy into the server's network.

Without an operator-given host allow-list, only globally routable addresses may be
contacted. The check runs where the socket is opened, on the addresses actually
connected to, so a name that resolves to a public address when checked and to
127.0.0.1 when connected (DNS rebinding) is still refused. Redirects are not followed
and environment proxies are ignored, so neither can route around the check.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from shopclip.serve.errors import ApiError


def address_allowed(ip: str) -> bool:
    """True for globally routable unicast addresses; loopback, private, link-local, CGNAT,
    multicast, documentation and reserved ranges (and their IPv4-mapped forms) are refused."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if inner is not None and not address_allowed(str(inner)):
            return False
    return bool(addr.is_global and not addr.is_multicast)


class BlockedAddress(httpcore.ConnectError):
    """The URL's host resolves to an address this server must not contact."""


class _GuardedBackend(httpcore.SyncBackend):
    """Resolve, refuse non-public addresses, then connect to the checked address itself."""

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {e}") from None
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not ips or not all(address_allowed(ip) for ip in ips):
            raise BlockedAddress(f"{host!r} resolves to a non-public address")
        last: Exception | None = None
        for ip in ips:
            try:
                return super().connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                last = e
        raise last or httpcore.ConnectError(f"cannot connect to {host!r}")


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a pool whose sockets come from _GuardedBackend.

    httpx has no public hook for the network backend, so the pool is rebuilt here;
    TLS still verifies the URL's host name (httpcore sends it as SNI, not the IP).
    """

    def __init__(self) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                             network_backend=_GuardedBackend())


def fetch_image(url: str, *, hosts: tuple[str, ...] | None, max_bytes: int, timeout: float = 5.0) -> bytes:
    """GET `url` (http/https, no redirects) into memory, at most `max_bytes`; ApiError otherwise.

    `hosts` given: only those host names, at whatever address (the operator vouches for
    them). `hosts` None: any host, but only at public addresses.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        _ = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        raise ApiError(422, "invalid_url", "url must be an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ApiError(422, "invalid_url", "url must be an absolute http(s) URL")
    if hosts is not None and hostname.lower() not in {h.lower() for h in hosts}:
        raise ApiError(403, "url_host_not_allowed", f"this server fetches only from {', '.join(hosts)}")
    transport: httpx.BaseTransport = httpx.HTTPTransport(trust_env=False) if hosts is not None else _GuardedTransport()
    try:
        with (httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client,
              client.stream("GET", url) as r):
            if r.status_code != 200:
                raise ApiError(422, "url_fetch_failed", f"fetching the url gave HTTP {r.status_code}")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise ApiError(413, "upload_too_large", f"the image is over {max_bytes} bytes")
            return bytes(data)
    except httpx.HTTPError as e:
        if isinstance(e.__cause__, BlockedAddress):
            raise ApiError(403, "url_address_not_allowed", "the url's host is a private, loopback or link-local "
                           "address; this server fetches only from public addresses") from None
        raise ApiError(422, "url_fetch_failed", f"could not fetch the url: {type(e).__name__}") from None
    except (ValueError, UnicodeError):  # a URL httpx itself cannot encode (e.g. a bad IDNA label)
        raise ApiError(422, "invalid_url", "url must be an absolute http(s) URL") from None
