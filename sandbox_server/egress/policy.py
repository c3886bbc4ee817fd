"""A request's network from its tenant's policy: the tenant's allow-list, or the request's own narrower one.

A request may narrow its tenant's list (fewer hosts, narrower patterns, fewer ports) or ask for no network at
all, never widen it: a rule no tenant rule covers is PERMISSION_DENIED naming it, as a limit above the tenant's
ceiling is. A narrowed rule keeps the credentials of the tenant rule that covers it.
"""

from __future__ import annotations

from functools import cache

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.egress.rules import AllowEntry, Credential, EgressRules, covers
from sandbox_server.errors import FieldViolation, InvalidRequest, PermissionDenied
from sandbox_server.execution.spec import EgressSpec
from sandbox_server.policy.models import NetworkPolicy, egress_host

MAX_REQUEST_RULES = 64


@cache
def tenant_rules(network: NetworkPolicy) -> EgressRules:
    """The tenant's allow-list as the proxy reads it (cached: policies are frozen and reloaded whole)."""
    return EgressRules(entries=tuple(
        AllowEntry(host=allow.host, ports=tuple(allow.ports), credentials=tuple(
            Credential(header=c.header, env=c.env, secret=c.secret, template=c.template)
            for c in allow.credentials))
        for allow in network.allow))


def egress_for(network: NetworkPolicy, requested: pb.Network | None, tenant: str,
               field: str = "network") -> EgressSpec | None:
    """The sandbox's egress, or None for no network. Raises InvalidRequest for a malformed rule and
    PermissionDenied for one outside the tenant's list."""
    if requested is not None and requested.mode == pb.Network.MODE_NONE:
        if requested.allow:
            raise InvalidRequest([FieldViolation(f"{field}.allow", "must be empty when mode is MODE_NONE")])
        return None
    narrowing = requested is not None and (requested.mode == pb.Network.MODE_ALLOWLIST or bool(requested.allow))
    if network.mode == "none":
        if narrowing:
            raise PermissionDenied(f"tenant {tenant!r} has no network (its policy says network: none)",
                                   reason="POLICY_DENIED", metadata={"tenant": tenant, "network": "none"})
        return None
    rules = tenant_rules(network)
    if narrowing and requested is not None:
        rules = _narrowed(rules, _requested_entries(requested, field), tenant, field)
    return EgressSpec(rules=rules, tenant=tenant, max_connections=network.max_connections,
                      connections_per_s=network.connections_per_s,
                      refusals_before_incident=network.refusals_before_incident)


def _requested_entries(requested: pb.Network, field: str) -> list[tuple[int, AllowEntry]]:
    problems: list[FieldViolation] = []
    entries: list[tuple[int, AllowEntry]] = []
    if len(requested.allow) > MAX_REQUEST_RULES:
        problems.append(FieldViolation(f"{field}.allow", f"at most {MAX_REQUEST_RULES} rules"))
    for i, rule in enumerate(requested.allow[:MAX_REQUEST_RULES]):
        where = f"{field}.allow[{i}]"
        try:
            host = egress_host(rule.host)
        except ValueError as exc:
            problems.append(FieldViolation(f"{where}.host", str(exc)))
            continue
        if not rule.ports:
            problems.append(FieldViolation(f"{where}.ports", "name at least one port"))
            continue
        bad = [p for p in rule.ports if not 1 <= p <= 65535]
        if bad:
            problems.append(FieldViolation(f"{where}.ports", f"ports are 1 to 65535 (got {bad[0]})"))
            continue
        entries.append((i, AllowEntry(host=host, ports=tuple(sorted(set(rule.ports))))))
    if problems:
        raise InvalidRequest(problems)
    return entries


def _narrowed(tenant_list: EgressRules, requested: list[tuple[int, AllowEntry]], tenant: str,
              field: str) -> EgressRules:
    out: list[AllowEntry] = []
    wider: list[str] = []
    for i, entry in requested:
        covering = [t for t in tenant_list.entries if covers(t, entry)]
        if not covering:
            wider.append(f"{field}.allow[{i}] ({entry.host} ports {list(entry.ports)}) is not within tenant "
                         f"{tenant!r}'s allow-list")
            continue
        # The most specific cover, as the proxy would pick for the tenant's own list: an exact name's
        # credentials, not a wildcard's absence of them.
        cover = max(covering, key=AllowEntry.specificity)
        out.append(AllowEntry(host=entry.host, ports=entry.ports, credentials=cover.credentials))
    if wider:
        raise PermissionDenied("; ".join(wider), reason="POLICY_DENIED", metadata={"tenant": tenant})
    return EgressRules(entries=tuple(out))
