"""Which hosts a download may connect to, checked at connect time.

A URL list is untrusted input: a row pointing at ``http://10.0.0.5/admin`` or at a cloud metadata
address would turn the downloader against the network it runs in. So every connection, including
every hop of a redirect, resolves the host, drops each address that is not public (private,
loopback, link-local, multicast, reserved, unspecified, carrier-grade NAT, IPv4 inside IPv6) and
connects only to an address it checked — the same address, so DNS cannot answer differently
between the check and the connect. When nothing is left the URL fails as ``private_address``
before a single packet leaves.

:class:`AddressPolicy` says what else is allowed, as a list of scoped entries (``parse_allow``):

- ``loopback``: 127.0.0.0/8 and ::1 (a test server on this machine);
- a network or address: ``10.0.0.0/8``, ``fd00::/8``, ``10.1.2.3``;
- a host name: ``mirror.internal`` (any address it resolves to, for URLs naming that host only);
- any of these with a port: ``10.1.2.3:9000``, ``[fd00::1]:9000``, ``mirror.internal:9000``,
  ``loopback:8765`` (that port only).

Nothing is implied: ``10.1.2.3:9000`` allows that mirror and nothing else, so a redirect from it to
loopback, to another port or to another private address is still refused.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

from curate.download import deadline

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
REFUSED_PREFIX = "refused: private address"  # reasons.py maps messages starting with this to private_address
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$", re.IGNORECASE)
_FILE_SUFFIXES = frozenset({"parquet", "pq", "csv", "tsv", "tab", "jsonl", "ndjson", "txt", "gz", "toml", "json"})
ENTRY_FORMS = "loopback, a network (10.0.0.0/8), an address, a host name, each optionally with :PORT"


class RefusedAddress(OSError):
    """The destination resolves only to addresses the policy does not allow."""


@dataclass(frozen=True)
class Allow:
    """One allow-list entry: addresses in ``networks`` (or any address of the URL's host when
    ``host`` is set), on ``port`` only when it is set."""

    networks: tuple[Network, ...] = ()
    host: str | None = None
    port: int | None = None
    text: str = ""

    def matches(self, ip: Address, host: str | None, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.host is not None:
            return host is not None and host.rstrip(".").lower() == self.host
        return any(ip.version == net.version and ip in net for net in self.networks)


def _plain(address: str | Address) -> Address:
    """The address a connection really reaches: IPv4 inside IPv6 is judged as the IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:10.0.0.1 (mapped), 64:ff9b::10.0.0.1 (NAT64), 2002:0a00:0001:: (6to4) reach 10.0.0.1.
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def is_public(address: str | Address) -> bool:
    ip = _plain(address)
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses always; what the ``allowed`` entries name in addition (empty: public only)."""

    allowed: tuple[Allow, ...] = ()

    @classmethod
    def loopback(cls) -> AddressPolicy:
        return parse_allow("loopback")

    def permits(self, address: str | Address, host: str | None = None, port: int | None = None) -> bool:
        """May a connection for a URL naming ``host`` (and ``port``) go to ``address``?"""
        ip = _plain(address)
        if any(entry.matches(ip, host, port) for entry in self.allowed):
            return True
        return ip.is_global and not ip.is_multicast and not ip.is_reserved

    def describe(self) -> str:
        return "public addresses" + (" and " + ", ".join(a.text for a in self.allowed) if self.allowed else " only")


def _split_port(part: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``net/len:port`` -> (target, port); a bare IPv6 address keeps its colons."""
    if part.startswith("["):
        close = part.find("]")
        if close < 0:
            raise ValueError(f"{part!r}: unclosed '['")
        rest = part[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{part!r}: expected :PORT after ']'")
        return part[1:close], _port(part, rest[1:]) if rest else None
    if part.count(":") == 1:
        target, port = part.split(":")
        return target, _port(part, port)
    return part, None


def _port(part: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{part!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_entry(part: str) -> Allow:
    """One allow-list entry (see the module doc); ValueError names what is wrong with it."""
    target, port = _split_port(part.strip())
    if target.lower() == "loopback":
        return Allow(LOOPBACK, None, port, part)
    try:
        return Allow((ipaddress.ip_network(target, strict=False),), None, port, part)
    except ValueError:
        pass
    if "/" in target or not _HOSTNAME.match(target) or target.replace(".", "").isdigit():
        raise ValueError(f"{part!r} is not an allow-list entry ({ENTRY_FORMS})")
    if target.rsplit(".", 1)[-1].lower() in _FILE_SUFFIXES:
        raise ValueError(f"{part!r} looks like a file, not a host; the flag takes entries, e.g. 'loopback'")
    return Allow((), target.rstrip(".").lower(), port, part)


def parse_allow(value: str | None) -> AddressPolicy:
    """``None``: public only; otherwise comma-separated entries (``loopback``, networks, addresses,
    host names, each with an optional ``:PORT``). Raises ValueError naming the first bad entry."""
    if value is None:
        return AddressPolicy()
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"empty allow-list; give entries such as 'loopback' or '10.1.2.3:9000' ({ENTRY_FORMS})")
    return AddressPolicy(tuple(dict.fromkeys(parse_entry(p) for p in parts)))


def _resolve(host: str, port: int) -> list[tuple]:
    """getaddrinfo, given no longer than the current URL deadline (a resolver can stall for tens of seconds)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # a literal: no DNS query
    except ValueError:
        pass
    left = deadline.remaining()
    if left is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    box: dict = {}

    def lookup():
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=lookup, name="dns", daemon=True)  # left behind if it outlives the deadline
    t.start()
    t.join(max(0.0, left))
    if t.is_alive():
        raise deadline.expired_error()
    if "error" in box:
        raise box["error"]
    return box["infos"]


def checked_addresses(host: str, port: int, policy: AddressPolicy) -> list[tuple]:
    """getaddrinfo for ``host``, keeping only addresses the policy permits for it; RefusedAddress if none.

    An IP literal resolves locally, with no DNS query.
    """
    infos = _resolve(host, port)
    ok = [info for info in infos if policy.permits(info[4][0], host, port)]
    if not ok:
        seen = sorted({info[4][0] for info in infos})
        raise RefusedAddress(f"{REFUSED_PREFIX}: {host}:{port} resolves to {', '.join(seen)}, not allowed")
    return ok


def safe_create_connection(policy: AddressPolicy):
    """A drop-in for ``socket.create_connection`` that connects only to addresses the policy permits,
    within the current URL deadline (``curate.download.deadline``), which also watches the socket."""

    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *args, **kwargs):
        host, port = address
        err: OSError | None = None
        for family, socktype, proto, _, sockaddr in checked_addresses(host, port, policy):
            sock = socket.socket(family, socktype, proto)
            try:
                limit = deadline.capped(timeout)
                if limit is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(limit)
                deadline.watch(sock)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)  # per-read timeout from here; the watchdog keeps the deadline
                return sock
            except OSError as e:
                err = e
                sock.close()
        raise err if err is not None else OSError(f"cannot connect to {host}:{port}")

    return create


def _connection_class(base: type, policy: AddressPolicy) -> type:
    create = safe_create_connection(policy)

    class Checked(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # HTTPConnection.connect (which HTTPSConnection.connect also calls) opens its socket
            # through this attribute: replacing it checks every connection, TLS or not.
            self._create_connection = create

    return Checked


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Bounded redirects; each hop's response goes through the request's ``check_hop`` first.

    ``check_hop(headers, url)`` (set by the fetcher, carried to every later hop) may raise
    :class:`urllib.error.URLError` to stop the chain, e.g. at ``X-Robots-Tag: noai`` on a hop whose
    target would not repeat it.
    """

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects
        self.max_repeats = 1  # the second visit to a URL in one chain is a loop

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check = getattr(req, "check_hop", None)
        if check is not None:
            try:
                check(headers, req.full_url)
            except urllib.error.URLError:
                fp.close()
                raise
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.check_hop = check
        return new


def build_opener(policy: AddressPolicy, max_redirects: int = 5) -> urllib.request.OpenerDirector:
    """An opener for http(s) only: checked connections, bounded redirects, no proxies, no other schemes.

    Environment proxies are ignored on purpose: through a proxy the destination address could not
    be checked. ``file:``, ``ftp:`` and ``data:`` URLs (and redirects to them) fail as unknown URL types.
    """
    http_conn = _connection_class(http.client.HTTPConnection, policy)
    https_conn = _connection_class(http.client.HTTPSConnection, policy)

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.UnknownHandler(),
        HTTP(),
        HTTPS(),
        urllib.request.HTTPDefaultErrorHandler(),
        _RedirectHandler(max_redirects),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
