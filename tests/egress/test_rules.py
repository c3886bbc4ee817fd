"""Egress rules: host normal form, allow-list matching, the address rules (every always-refused range refused
whatever the list says, internal ranges only when named as a literal), credentials routing, and narrowing a
request's list within the tenant's. Pure: no sockets at all."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_server.egress.rules import (
    BAD_HOST,
    CREDENTIALS_NEED_HTTP,
    HOST_NOT_ALLOWED,
    LOOPBACK_ADDRESS,
    METADATA_OR_LINK_LOCAL,
    MULTICAST,
    PORT_NOT_ALLOWED,
    PRIVATE_ADDRESS,
    SERVER_PORT,
    UNSPECIFIED,
    AllowEntry,
    Credential,
    EgressRules,
    HttpRoute,
    IPAddress,
    canonical_address,
    covers,
    narrow,
    normalise_host,
    within,
)

ip = ipaddress.ip_address
TOKEN = Credential("Authorization", env="API_TOKEN", template="Bearer {value}")
SECRET_KEY = Credential("X-Key", secret="key")  # noqa: S106 (the name of a key in the secrets file)


# -- normal form --

@pytest.mark.parametrize(("given_host", "normal"), [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("a-b.c0.example", "a-b.c0.example"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("127.0.0.3", ip("127.0.0.3")),
    ("127.0.0.3.", ip("127.0.0.3")),
    ("[::1]", ip("::1")),
    ("::1", ip("::1")),
    ("[2001:DB8:0::1]", ip("2001:db8::1")),
    ("[::ffff:127.0.0.3]", ip("127.0.0.3")),
    ("::ffff:7f00:3", ip("127.0.0.3")),
    ("localhost", "localhost"),
])
def test_normal_form(given_host: str, normal: str | IPAddress) -> None:
    assert normalise_host(given_host) == normal


@pytest.mark.parametrize("bad", [
    "", ".", "a..b", ".a", "a b", "a_b.example", "-a.example", "a-.example", "a" * 64 + ".example",
    ".".join(["a" * 63] * 4) + ".ab", "exa%mple.com", "fe80::1%eth0", "[fe80::1%25eth0]", "[127.0.0.1]",
    "[::1", "::1]", "2130706433", "0x7f000001", "0x7f.1", "127.1", "0177.0.0.1", "127.0.0.01", "1.2.3.4.5",
    "a.1", "example.0x10", "xn--zz.example", "xn--a.example", "xn--abc-.example", "exa\u200bmple.com",
    "example.com..", "*.example.com", "a/b", "a:b",
])
def test_bad_hosts(bad: str) -> None:
    with pytest.raises(ValueError, match=r"host|name|literal|numeric"):
        normalise_host(bad)


def test_canonical_address_unmaps_ipv4_mapped_only() -> None:
    assert canonical_address(ip("::ffff:169.254.169.254")) == ip("169.254.169.254")
    assert canonical_address(ip("::a9fe:a9fe")) == ip("::a9fe:a9fe")  # compatible: judged, not rewritten
    assert canonical_address(ip("10.0.0.1")) == ip("10.0.0.1")


# -- entries --

def test_entries_are_normalised() -> None:
    assert AllowEntry("*.Example.COM.", (443,)).host == "*.example.com"
    assert AllowEntry("[::FFFF:127.0.0.3]", (1,)).host == "127.0.0.3"
    assert AllowEntry("[::FFFF:127.0.0.3]", (1,)).ip == ip("127.0.0.3")
    assert AllowEntry("2001:DB8::1", (1,)).host == "2001:db8::1"
    assert AllowEntry("Api.Example.test", (443,)) == AllowEntry("api.example.test", (443,))


@pytest.mark.parametrize(("host", "ports"), [
    ("example.com", ()), ("example.com", (0,)), ("example.com", (65536,)), ("*", (443,)), ("*.", (443,)),
    ("*.*.example.com", (443,)), ("*.127.0.0.1", (443,)), ("a.*.example.com", (443,)), ("2130706433", (80,)),
    ("exa mple.com", (80,)),
])
def test_bad_entries(host: str, ports: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"egress entry|host|name|literal|numeric|wildcard"):
        AllowEntry(host, ports)


@pytest.mark.parametrize("kwargs", [
    {"header": "Host", "env": "X"}, {"header": "content-length", "env": "X"}, {"header": "Bad Header", "env": "X"},
    {"header": "Authorization"}, {"header": "Authorization", "env": "X", "secret": "y"},
    {"header": "Authorization", "env": ""}, {"header": "Authorization", "env": "X", "template": "Bearer"},
    {"header": "Proxy-Authorization", "env": "X"},
])
def test_bad_credentials(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="credential"):
        Credential(**kwargs)


def test_credential_template_is_not_a_format_string() -> None:
    cred = Credential("X-Key", secret="k", template="{value.__class__} {0} {value}")  # noqa: S106 (a key name)
    assert cred.header_value("s3cret") == "{value.__class__} {0} s3cret"


# -- matching --

RULES = EgressRules(entries=(
    AllowEntry("api.example.com", (443,)),
    AllowEntry("*.example.com", (443, 8443)),
    AllowEntry("*.deep.example.com", (443,), credentials=(TOKEN,)),
    AllowEntry("127.0.0.3", (8080,)),
    AllowEntry("::1", (9000,)),
))


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("api.example.com", 443, "api.example.com"),
    ("API.Example.com.", 443, "api.example.com"),
    ("api.example.com", 8443, "*.example.com"),
    ("a.example.com", 443, "*.example.com"),
    ("a.b.example.com", 8443, "*.example.com"),
    ("x.deep.example.com", 443, "*.deep.example.com"),  # the longer suffix is the more specific
    ("example.com", 443, HOST_NOT_ALLOWED),
    ("badexample.com", 443, HOST_NOT_ALLOWED),
    ("example.com.evil.test", 443, HOST_NOT_ALLOWED),
    ("api.example.com", 80, PORT_NOT_ALLOWED),
    ("127.0.0.3", 8080, "127.0.0.3"),
    ("[::ffff:127.0.0.3]", 8080, "127.0.0.3"),
    ("127.0.0.3", 80, PORT_NOT_ALLOWED),
    ("127.0.0.4", 8080, HOST_NOT_ALLOWED),
    ("[::1]", 9000, "::1"),
    ("::1", 9000, "::1"),
    ("[0:0::1]", 9000, "::1"),
    ("2130706433", 8080, BAD_HOST),
    ("0x7f.1", 8080, BAD_HOST),
    ("127.1", 8080, BAD_HOST),
    ("a_b.example.com", 443, BAD_HOST),
])
def test_decide(host: str, port: int, expected: str) -> None:
    found = RULES.decide(host, port)
    assert (found.host if isinstance(found, AllowEntry) else found) == expected
    matched = RULES.match(host, port)
    assert (matched.host if matched else None) == (expected if isinstance(found, AllowEntry) else None)


def test_a_name_never_matches_an_ip_entry_nor_an_ip_a_name_entry() -> None:
    rules = EgressRules(entries=(AllowEntry("localhost", (80,)), AllowEntry("127.0.0.1", (81,))))
    assert rules.decide("127.0.0.1", 80) == PORT_NOT_ALLOWED  # only the literal entry covers the literal
    assert rules.decide("localhost", 81) == PORT_NOT_ALLOWED


def test_ties_go_to_the_first_entry() -> None:
    first, second = AllowEntry("a.example", (1,)), AllowEntry("a.example", (1,), credentials=(TOKEN,))
    assert EgressRules(entries=(first, second)).match("a.example", 1) is first


def test_routes() -> None:
    rules = EgressRules(entries=(
        AllowEntry("api.example.test", (443, 8443), credentials=(TOKEN,)),
        AllowEntry("plain.example.test", (80,)),
    ))
    assert rules.route_connect("api.example.test", 443) == CREDENTIALS_NEED_HTTP
    assert rules.route_connect("plain.example.test", 80) == rules.entries[1]
    assert rules.route_http("api.example.test", 80) == HttpRoute(rules.entries[0], 443, tls=True)
    assert rules.route_http("api.example.test", 8443) == HttpRoute(rules.entries[0], 8443, tls=True)
    assert rules.route_http("api.example.test", 8080) == PORT_NOT_ALLOWED
    assert rules.route_http("plain.example.test", 80) == HttpRoute(rules.entries[1], 80, tls=False)
    assert rules.route_http("plain.example.test", 81) == PORT_NOT_ALLOWED
    assert rules.route_http("other.example.test", 80) == HOST_NOT_ALLOWED
    assert rules.route_http("2130706433", 80) == BAD_HOST


# -- addresses --

NAMED = EgressRules(
    entries=(
        AllowEntry("169.254.169.254", (80,)), AllowEntry("fd00:ec2::254", (80,)), AllowEntry("224.0.0.1", (80,)),
        AllowEntry("0.0.0.0", (80,)), AllowEntry("127.0.0.2", (80, 7000)), AllowEntry("10.1.2.3", (80,)),
        AllowEntry("::1", (80,)), AllowEntry("64:ff9b::808:808", (80,)), AllowEntry("203.0.113.5", (80, 7000)),
    ),
    server_ports=frozenset({7000}),
    local_addresses=frozenset({ip("203.0.113.5"), ip("198.51.100.7")}),
)


@pytest.mark.parametrize(("address", "port", "reason"), [
    # always refused, named or not
    ("169.254.169.254", 80, METADATA_OR_LINK_LOCAL),
    ("169.254.0.1", 80, METADATA_OR_LINK_LOCAL),
    ("::ffff:169.254.169.254", 80, METADATA_OR_LINK_LOCAL),
    ("::a9fe:a9fe", 80, METADATA_OR_LINK_LOCAL),  # IPv4-compatible
    ("::ffff:0:a9fe:a9fe", 80, METADATA_OR_LINK_LOCAL),  # SIIT
    ("64:ff9b::a9fe:a9fe", 80, METADATA_OR_LINK_LOCAL),  # NAT64
    ("64:ff9b:1::a9fe:a9fe", 80, METADATA_OR_LINK_LOCAL),  # local-use NAT64
    ("2002:a9fe:a9fe::1", 80, METADATA_OR_LINK_LOCAL),  # 6to4
    ("2001:0:4136:e378:8000:63bf:5601:5601", 80, METADATA_OR_LINK_LOCAL),  # Teredo, client 169.254.169.254
    ("fd00:ec2::254", 80, METADATA_OR_LINK_LOCAL),
    ("fe80::1", 80, METADATA_OR_LINK_LOCAL),
    ("100.100.100.200", 80, METADATA_OR_LINK_LOCAL),
    ("192.0.0.192", 80, METADATA_OR_LINK_LOCAL),
    ("168.63.129.16", 80, METADATA_OR_LINK_LOCAL),
    ("224.0.0.1", 80, MULTICAST),
    ("239.255.255.250", 80, MULTICAST),
    ("255.255.255.255", 80, MULTICAST),
    ("ff02::1", 80, MULTICAST),
    ("::ffff:224.0.0.1", 80, MULTICAST),
    ("0.0.0.0", 80, UNSPECIFIED),
    ("0.1.2.3", 80, UNSPECIFIED),
    ("::", 80, UNSPECIFIED),
    ("127.0.0.2", 7000, SERVER_PORT),
    ("::ffff:127.0.0.2", 7000, SERVER_PORT),
    ("::ffff:0:7f00:2", 7000, SERVER_PORT),
    ("203.0.113.5", 7000, SERVER_PORT),
    ("198.51.100.7", 7000, SERVER_PORT),
    # internal: only when named with the port
    ("127.0.0.2", 80, None),
    ("::ffff:127.0.0.2", 80, None),
    ("127.0.0.3", 80, LOOPBACK_ADDRESS),
    ("127.0.0.2", 81, LOOPBACK_ADDRESS),
    ("::1", 80, None),
    ("::1", 81, LOOPBACK_ADDRESS),
    ("10.1.2.3", 80, None),
    ("10.1.2.4", 80, PRIVATE_ADDRESS),
    ("172.16.0.1", 443, PRIVATE_ADDRESS),
    ("192.168.1.1", 443, PRIVATE_ADDRESS),
    ("100.64.0.1", 443, PRIVATE_ADDRESS),
    ("198.18.0.1", 443, PRIVATE_ADDRESS),
    ("192.0.0.8", 443, PRIVATE_ADDRESS),
    ("192.0.2.1", 443, PRIVATE_ADDRESS),
    ("240.0.0.1", 443, PRIVATE_ADDRESS),
    ("fc00::1", 443, PRIVATE_ADDRESS),
    ("fd12:3456::1", 443, PRIVATE_ADDRESS),
    ("2001:db8::1", 443, PRIVATE_ADDRESS),
    ("3fff::1", 443, PRIVATE_ADDRESS),
    ("::a0a:a0a", 443, PRIVATE_ADDRESS),
    ("64:ff9b::808:808", 80, None),  # NAT64 of a public address: only as the exact literal named
    ("64:ff9b::808:808", 443, PRIVATE_ADDRESS),
    ("2002:808:808::1", 443, PRIVATE_ADDRESS),
    ("198.51.100.7", 80, PRIVATE_ADDRESS),  # the host's own public address
    ("203.0.113.5", 80, None),
    # public unicast: the name was matched already
    ("8.8.8.8", 443, None),
    ("::ffff:8.8.8.8", 443, None),
    ("2606:4700:4700::1111", 443, None),
])
def test_check_address(address: str, port: int, reason: str | None) -> None:
    assert NAMED.check_address(ip(address), port) == reason


ALWAYS = [
    ("169.254.0.0/16", METADATA_OR_LINK_LOCAL), ("fe80::/10", METADATA_OR_LINK_LOCAL),
    ("100.100.100.200/32", METADATA_OR_LINK_LOCAL), ("192.0.0.192/32", METADATA_OR_LINK_LOCAL),
    ("fd00:ec2::254/128", METADATA_OR_LINK_LOCAL), ("224.0.0.0/4", MULTICAST), ("ff00::/8", MULTICAST),
    ("255.255.255.255/32", MULTICAST), ("0.0.0.0/8", UNSPECIFIED), ("::/128", UNSPECIFIED),
]
ALWAYS_REASONS = {METADATA_OR_LINK_LOCAL, MULTICAST, UNSPECIFIED}
INTERNAL = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15",
            "fc00::/7", "2001:db8::/32", "192.0.2.0/24", "::1/128"]


def _in_network(network: str) -> st.SearchStrategy[IPAddress]:
    net = ipaddress.ip_network(network)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


def _wrapped(address: IPAddress) -> st.SearchStrategy[IPAddress]:
    """The address itself, and for IPv4 the IPv6 forms that carry it."""
    if isinstance(address, ipaddress.IPv6Address):
        return st.just(address)
    n = int(address)
    nat64, sixtofour = ipaddress.IPv6Address((0x64FF9B << 96) | n), ipaddress.IPv6Address((0x2002 << 112) | n << 80)
    forms = [address, ip(f"::ffff:{address}"), nat64, sixtofour]
    # IPv4-compatible ::a.b.c.d, except for 0.0.0.0 and 0.0.0.1, whose forms are :: and ::1 themselves.
    return st.sampled_from([*forms, ipaddress.IPv6Address(n)] if n > 1 else forms)


ports = st.integers(1, 65535)
label = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True).filter(lambda s: not s.startswith("xn--"))
names = st.lists(label, min_size=1, max_size=4).map(".".join)


@settings(max_examples=300)
@given(data=st.data(), port=ports, extra_ports=st.lists(ports, max_size=3))
def test_always_refused_whatever_the_list_says(data: st.DataObject, port: int, extra_ports: list[int]) -> None:
    network, reason = data.draw(st.sampled_from(ALWAYS))
    address = data.draw(_in_network(network).flatmap(_wrapped))
    rules = EgressRules(entries=(AllowEntry(str(address), (port, *extra_ports)),
                                 AllowEntry(str(canonical_address(address)), (port,))))
    got = rules.check_address(address, port)
    assert got in ALWAYS_REASONS
    if canonical_address(address) == address or isinstance(canonical_address(address), ipaddress.IPv4Address):
        assert got == reason


@given(data=st.data(), port=ports, other=ports)
def test_internal_only_when_named_exactly(data: st.DataObject, port: int, other: int) -> None:
    address = data.draw(_in_network(data.draw(st.sampled_from(INTERNAL))))
    assert EgressRules(entries=()).check_address(address, port) in (PRIVATE_ADDRESS, LOOPBACK_ADDRESS)
    named = EgressRules(entries=(AllowEntry(str(address), (port,)),))
    assert named.check_address(address, port) is None
    assert (named.check_address(address, other) is None) == (other == port)
    assert EgressRules(entries=(AllowEntry(str(address), (port,)),), server_ports=frozenset({port}),
                       local_addresses=frozenset({address})).check_address(address, port) == SERVER_PORT


@given(address=st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), port=ports)
def test_ipv4_mapped_is_judged_as_ipv4(address: ipaddress.IPv4Address, port: int) -> None:
    rules = EgressRules(entries=(AllowEntry(str(address), (port,)),), server_ports=frozenset({port}))
    assert rules.check_address(ip(f"::ffff:{address}"), port) == rules.check_address(address, port)


@given(suffix=names, name=names, port=ports)
def test_wildcard_never_matches_its_suffix(suffix: str, name: str, port: int) -> None:
    rules = EgressRules(entries=(AllowEntry("*." + suffix, (port,)),))
    assert rules.match(suffix, port) is None
    assert rules.match("x" + suffix, port) is None
    assert rules.match(f"{name}.{suffix}", port) is not None
    assert rules.match(f"{name}.{suffix}".upper() + ".", port) is not None


@given(entries=st.lists(st.tuples(st.booleans(), names, st.lists(ports, min_size=1, max_size=3)), max_size=6),
       host=names, port=ports)
def test_a_match_allows_the_host_and_port(entries: list[tuple[bool, str, list[int]]], host: str, port: int) -> None:
    rules = EgressRules(entries=tuple(AllowEntry(("*." if wild else "") + h, tuple(p)) for wild, h, p in entries))
    found = rules.match(host, port)
    if found is not None:
        assert port in found.ports
        assert found.host == host or host.endswith("." + found.host.removeprefix("*."))
    else:
        assert not any(e.matches_host(host) and port in e.ports for e in rules.entries)


@given(number=st.integers(0, 2**40), hexa=st.integers(0, 2**32),
       dotted=st.lists(st.integers(0, 300), min_size=1, max_size=5))
def test_numeric_hosts_are_never_names(number: int, hexa: int, dotted: list[int]) -> None:
    rules = EgressRules(entries=(AllowEntry("*.example", (80,)),))
    assert rules.decide(str(number), 80) == BAD_HOST
    assert rules.decide(hex(hexa), 80) == BAD_HOST
    text = ".".join(map(str, dotted))
    expected = HOST_NOT_ALLOWED if len(dotted) == 4 and max(dotted) < 256 else BAD_HOST
    assert rules.decide(text, 80) == expected


# -- narrowing --

def test_covers() -> None:
    wild = AllowEntry("*.example.com", (443, 8443), credentials=(TOKEN,))
    assert covers(wild, AllowEntry("api.example.com", (443,)))
    assert covers(wild, AllowEntry("*.api.example.com", (8443,), credentials=(TOKEN,)))
    assert covers(wild, AllowEntry("*.example.com", (443, 8443)))
    assert not covers(wild, AllowEntry("example.com", (443,)))
    assert not covers(wild, AllowEntry("*.com", (443,)))
    assert not covers(wild, AllowEntry("api.example.com", (80,)))
    other = Credential("Authorization", env="ROOT_TOKEN")
    assert not covers(wild, AllowEntry("api.example.com", (443,), credentials=(other,)))
    exact = AllowEntry("api.example.com", (443,))
    assert not covers(exact, AllowEntry("*.api.example.com", (443,)))
    assert covers(AllowEntry("10.0.0.1", (80,)), AllowEntry("::ffff:10.0.0.1", (80,)))
    assert not covers(AllowEntry("10.0.0.1", (80,)), AllowEntry("10.0.0.2", (80,)))
    assert not covers(AllowEntry("*.example.com", (80,)), AllowEntry("10.0.0.1", (80,)))


def test_narrow() -> None:
    tenant = EgressRules(entries=(AllowEntry("*.example.com", (443,)),), server_ports=frozenset({50051}))
    ok = EgressRules(entries=(AllowEntry("api.example.com", (443,)),), server_ports=frozenset({9090}))
    narrowed = narrow(tenant, ok)
    assert narrowed.entries == ok.entries
    assert narrowed.server_ports == {50051, 9090}
    wide = EgressRules(entries=(AllowEntry("api.example.com", (443,)), AllowEntry("evil.test", (443,))))
    assert within(tenant, wide) == ["egress entry 'evil.test' ports 443 is not within the tenant's egress list"]
    with pytest.raises(ValueError, match=r"evil\.test"):
        narrow(tenant, wide)


def _narrower(entry: AllowEntry) -> st.SearchStrategy[AllowEntry]:
    sub_ports = st.lists(st.sampled_from(entry.ports), min_size=1, unique=True).map(tuple)
    creds = st.lists(st.sampled_from(entry.credentials), unique=True).map(tuple) if entry.credentials \
        else st.just(())
    if entry.wildcard_suffix is None:
        host = st.just(entry.host)
    else:
        host = st.one_of(st.just(entry.host), names.map(lambda n: f"{n}.{entry.wildcard_suffix}"),
                         names.map(lambda n: f"*.{n}.{entry.wildcard_suffix}"))
    return st.builds(AllowEntry, host, sub_ports, creds)


entries_strategy = st.builds(
    AllowEntry,
    st.one_of(names, names.map(lambda n: "*." + n), st.sampled_from(["10.0.0.1", "::1", "127.0.0.3"])),
    st.lists(st.sampled_from([80, 443, 8080, 8443]), min_size=1, max_size=3, unique=True).map(tuple),
    st.lists(st.sampled_from([TOKEN, SECRET_KEY]), max_size=2, unique=True).map(tuple),
)


@given(tenant=st.lists(entries_strategy, min_size=1, max_size=5), data=st.data())
def test_narrowing_stays_within(tenant: list[AllowEntry], data: st.DataObject) -> None:
    tenant_rules = EgressRules(entries=tuple(tenant))
    derived = [data.draw(_narrower(data.draw(st.sampled_from(tenant)))) for _ in range(data.draw(st.integers(0, 4)))]
    requested = EgressRules(entries=tuple(derived))
    assert within(tenant_rules, requested) == []
    assert within(tenant_rules, narrow(tenant_rules, requested)) == []


@given(tenant=st.lists(entries_strategy, max_size=4), requested=st.lists(entries_strategy, max_size=4),
       host=names, port=st.sampled_from([80, 443, 8080, 8443]))
def test_narrowed_rules_never_allow_more(tenant: list[AllowEntry], requested: list[AllowEntry], host: str,
                                         port: int) -> None:
    tenant_rules = EgressRules(entries=tuple(tenant))
    try:
        narrowed = narrow(tenant_rules, EgressRules(entries=tuple(requested)))
    except ValueError:
        assert within(tenant_rules, EgressRules(entries=tuple(requested)))
        return
    for candidate in (host, "a." + host):
        if narrowed.match(candidate, port) is not None:
            assert tenant_rules.match(candidate, port) is not None
