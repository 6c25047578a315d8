"""Which addresses a fetch may connect to: public unicast only, decided on resolved addresses.

``ipaddress.is_global`` alone is not a policy (on 3.11 it calls 192.0.0.192, 168.63.129.16, 224.0.0.1,
``::127.0.0.1`` and several IPv6 transition ranges global), so an explicit deny table comes first, and
IPv4 carried inside IPv6 (mapped, compatible, 6to4, NAT64) is unwrapped and checked as IPv4 too.
"""

from __future__ import annotations

import ipaddress
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DENY_V4: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "168.63.129.16/32",  # Azure's platform endpoint, reachable from every VM
    )
)
DENY_V6: Final = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and IPv4-compatible
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: judged by the IPv4 inside, then refused as a form anyway
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT): the same, in the translators' spelling
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/32",  # Teredo
        "2001:db8::/32",
        "2002::/16",  # 6to4
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in ipaddress.IPv6Network("::ffff:0:0:0/96"):
        return ipaddress.IPv4Address(ip.packed[12:])
    if ip.sixtofour is not None:
        return ip.sixtofour
    packed = ip.packed
    if packed[:12] == bytes(12):
        return ipaddress.IPv4Address(packed[12:])
    if ip in ipaddress.IPv6Network("64:ff9b::/96") or ip in ipaddress.IPv6Network("64:ff9b:1::/48"):
        return ipaddress.IPv4Address(packed[12:])
    return None


def refusal(address: str) -> str | None:
    """Why a fetch may not connect to ``address`` (a resolved IP), or None when it is public."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_v4(ip)
        if inner is not None and refusal(str(inner)) is not None:
            return f"address is not public ({ip} carries {inner})"
        if any(ip in net for net in DENY_V6):
            return f"address is not public ({ip})"
    elif any(ip in net for net in DENY_V4):
        return f"address is not public ({ip})"
    if not ip.is_global:
        return f"address is not public ({ip})"
    return None
