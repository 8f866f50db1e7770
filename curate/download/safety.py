"""Which hosts a download may connect to, checked at connect time.

A URL list is untrusted input: a row pointing at ``http://10.0.0.5/admin`` or at a cloud metadata
address would turn the downloader against the network it runs in. So every connection, including
every hop of a redirect, resolves the host, drops each address that is not public (private,
loopback, link-local, multicast, reserved, unspecified, carrier-grade NAT, IPv4 inside IPv6) and
connects only to an address it checked — the same address, so DNS cannot answer differently
between the check and the connect. When nothing is left the URL fails as ``private_address``
before a single packet leaves.

:class:`AddressPolicy` says what else is allowed: ``AddressPolicy.loopback()`` (the bare
``--allow-private-hosts``) adds 127.0.0.0/8 and ::1 only, so a local test server works while
private networks stay refused; ``parse_allow("10.0.0.0/8,fd00::/8")`` adds those networks too.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
REFUSED_PREFIX = "refused: private address"  # reasons.py maps messages starting with this to private_address


class RefusedAddress(OSError):
    """The destination resolves only to addresses the policy does not allow."""


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses always; ``allowed`` networks in addition (empty: public only)."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def loopback(cls) -> AddressPolicy:
        return cls(LOOPBACK)

    def permits(self, address: str | Address) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
        if isinstance(ip, ipaddress.IPv6Address):
            # IPv4 inside IPv6 reaches the IPv4 address: ::ffff:10.0.0.1 (mapped), 64:ff9b::10.0.0.1 (NAT64),
            # 2002:0a00:0001:: (6to4). Judge the IPv4 address.
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            elif ip in NAT64:
                ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            elif ip.sixtofour is not None:
                ip = ip.sixtofour
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return True
        return ip.is_global and not ip.is_multicast and not ip.is_reserved

    def describe(self) -> str:
        return "public addresses" + (" and " + ", ".join(str(n) for n in self.allowed) if self.allowed else " only")


def parse_allow(value: str | None) -> AddressPolicy:
    """``None``: public only; ``""`` or ``"loopback"``: plus loopback; ``"NET[,NET...]"``: plus loopback and NETs.

    Raises ValueError naming the first part that is not a network.
    """
    if value is None:
        return AddressPolicy()
    nets = list(LOOPBACK)
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part == "loopback":
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not a network (e.g. 10.0.0.0/8 or fd00::/8)") from None
    return AddressPolicy(tuple(dict.fromkeys(nets)))


def checked_addresses(host: str, port: int, policy: AddressPolicy) -> list[tuple]:
    """getaddrinfo for ``host``, keeping only addresses the policy permits; RefusedAddress if none.

    An IP literal resolves locally, with no DNS query.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ok = [info for info in infos if policy.permits(info[4][0])]
    if not ok:
        seen = sorted({info[4][0] for info in infos})
        raise RefusedAddress(f"{REFUSED_PREFIX}: {host} resolves to {', '.join(seen)}, not allowed")
    return ok


def safe_create_connection(policy: AddressPolicy):
    """A drop-in for ``socket.create_connection`` that connects only to addresses the policy permits."""

    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *args, **kwargs):
        host, port = address
        err: OSError | None = None
        for family, socktype, proto, _, sockaddr in checked_addresses(host, port, policy):
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
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
    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects
        self.max_repeats = 1  # the second visit to a URL in one chain is a loop


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
