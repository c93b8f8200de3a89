"""Where REST hooks may be sent: public addresses only, checked when subscribing and again,
pinned, when delivering (the guard against server-side request forgery).

Whoever holds the API token chooses a target URL, and the connector POSTs to it from inside
the deployment's network. Unguarded, that lets them make the connector call what only it can
reach: ``127.0.0.1``, the LAN, a cloud's metadata service at ``169.254.169.254``. So, unless
``WACRM_HOOKS_ALLOW_PRIVATE_TARGETS`` is true (development; receivers on an on-premise LAN):

- a target's host must not be, or resolve to, an address that is loopback, private (RFC 1918,
  ``fc00::/7``), link-local, multicast, reserved, unspecified, site-local, or otherwise not
  globally routable (CGNAT ``100.64.0.0/10``, documentation and benchmarking ranges…). An
  IPv6 address that carries an IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``,
  NAT64 ``64:ff9b::/96``) is judged by the IPv4 address. IPv4 in the forms the C resolver
  also takes (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) is read as the address
  it is. ``localhost`` and ``*.localhost`` are refused without asking DNS.
- :func:`public_addresses` gives the checked addresses (all of them public, or it refuses);
  when subscribing, a name that resolves to no address at all is let through (delivering
  checks again).
- :class:`PublicOnlyTransport` does the same check for every request, then connects to the
  address it checked (the URL's host replaced by that address; the ``Host`` header and TLS
  SNI and certificate check keep the name, through httpx's ``sni_hostname`` extension), so a
  DNS answer that changes after the check (rebinding) cannot steer the connection elsewhere.

Redirects are not followed by the delivery client; if they were, each hop would pass through
this transport too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urlsplit

import httpx

IPAddress = IPv4Address | IPv6Address

SETTING = "WACRM_HOOKS_ALLOW_PRIVATE_TARGETS"
ONLY_PUBLIC = f"REST hooks go only to public addresses unless {SETTING} is true"
MAX_ADDRESSES_TRIED = 3  # per delivery, when connecting to one fails

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# What inet_aton reads as an IPv4 address: 1 to 4 parts, decimal, octal (0…) or hex (0x…).
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")


class TargetRefused(ValueError):
    """The target's host is not a public address; the message names the host and why.
    ``permanent``: the host is an address (or localhost), so asking again cannot change it;
    a name's DNS answer can."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def address_problem(ip: IPAddress) -> str | None:
    """None for a public unicast address; else what it is ("a loopback address", …)."""
    if isinstance(ip, IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:
        return "an address that is not globally routable"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells (IPv6 without brackets, with or without a zone; IPv4 in
    any form the C resolver takes), or None for a name."""
    bare = host.split("%", 1)[0]  # an IPv6 zone (fe80::1%eth0, or %25eth0 in a URL)
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host.lower()):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, as a connection would see them (first to try
    first); raises :class:`OSError` when it does not resolve. Tests replace this function."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # a label the idna codec refuses: not a name DNS has
        raise OSError(f"not a resolvable name ({exc})") from None
    found: list[IPAddress] = []
    for *_, sockaddr in answers:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in found:
            found.append(ip)
    return found


def public_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses to connect to for ``host``, every one of them public. Raises
    :class:`TargetRefused` if the host is, or resolves to, any other address, and
    :class:`OSError` if it resolves to none."""
    name = host.lower()
    literal = literal_address(name.rstrip("."))
    if literal is not None:
        problem = address_problem(literal)
        if problem is not None:
            raise TargetRefused(f"host {host!r} is {problem}; {ONLY_PUBLIC}", permanent=True)
        return [literal]
    if _is_localhost(name):
        raise TargetRefused(
            f"host {host!r} is this machine (localhost); {ONLY_PUBLIC}", permanent=True
        )
    found = resolve_host(name, port)
    if not found:
        raise OSError(f"{host!r} resolves to no address")
    for ip in found:
        problem = address_problem(ip)
        if problem is not None:
            # The class of address, never the address: a caller must not learn the network.
            raise TargetRefused(
                f"host {host!r} resolves to {problem}; {ONLY_PUBLIC}", permanent=False
            )
    return found


def check_target(url: str) -> None:
    """When subscribing: raise :class:`TargetRefused` if ``url``'s host is not public. A
    name that does not resolve now passes (it is checked again at every delivery). Raises
    :class:`httpx.InvalidURL` for a URL the delivery client could not send to."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if literal_address(host.rstrip(".")) is not None or _is_localhost(host):
        public_addresses(host, port)  # says why, in words httpx's parser has none for
    name = httpx.URL(url).raw_host.decode("ascii")  # as DNS will be asked (IDNA)
    with contextlib.suppress(OSError):
        public_addresses(name, port)


def _is_localhost(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


class PublicOnlyTransport(httpx.BaseTransport):
    """Sends a request only to a public address of its host, and to the very address it
    checked (see the module docstring). A refused host raises :class:`TargetRefused`; one
    that does not resolve, :class:`httpx.ConnectError`. If connecting fails, the next of the
    checked addresses is tried (at most :data:`MAX_ADDRESSES_TRIED`).

    ``inner`` sends the pinned request; by default an :class:`httpx.HTTPTransport` that
    keeps no idle connections: its pool knows a connection by address only, and one opened
    (and TLS-verified) for one name must not carry a request for another name on the same
    address."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner or httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")
        try:
            addresses = public_addresses(host, _port(request.url))
        except OSError as exc:
            raise httpx.ConnectError(
                f"the target's host does not resolve ({type(exc).__name__})", request=request
            ) from None
        extensions = dict(request.extensions)
        if request.url.scheme == "https" and literal_address(host) is None:
            extensions["sni_hostname"] = host  # TLS: SNI and the certificate check use the name
        failure: httpx.TransportError | None = None
        for ip in addresses[:MAX_ADDRESSES_TRIED]:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(ip)),
                headers=request.headers,  # Host: keeps the name
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return self._inner.handle_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc  # nothing was sent: the next address may answer
        assert failure is not None
        raise failure

    def close(self) -> None:
        self._inner.close()
