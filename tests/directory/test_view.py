"""The directory view: parsing netstackd's `watch` lines, names, VIPs, the label
policy and round robin."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from netstack.directory.view import Instance, Route, View, ViewError, allowed


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def instance(port: int, host_port: int, **labels: str) -> dict[str, Any]:
    return {
        "port": port,
        "host": "127.0.0.1",
        "host_port": host_port,
        "labels": labels or {"zone": "default"},
    }


def message(*services: dict[str, Any], domain: str = "netstack.internal") -> dict[str, Any]:
    return {
        "view": {
            "domain": domain,
            "vip_cidr": "198.18.0.0/16",
            "vip6_cidr": "fd4e:5344::/64",
            "services": list(services),
        }
    }


def service(name: str, n: int, *instances: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "vip": f"198.18.0.{n}",
        "vip6": f"fd4e:5344::{n}",
        "instances": list(instances),
    }


WEB = service("web", 1, instance(8080, 40123), instance(8080, 40124), instance(9090, 40125))
DB = service("db", 2)  # reserved, not served


def test_the_protocol_documents_example_parses() -> None:
    v = View.parse(message(WEB, DB))
    web = v.lookup("web")
    assert web is not None and web.vip == ip("198.18.0.1") and web.vip6 == ip("fd4e:5344::1")
    assert web.instances[0] == Instance(8080, "127.0.0.1", 40123, {"zone": "default"})
    assert v.domain == "netstack.internal"


@pytest.mark.parametrize(
    "name",
    [
        "web",
        "web.",
        "WEB",
        "web.netstack.internal",
        "WEB.NETSTACK.INTERNAL.",
        "Web.Netstack.Internal",
    ],
)
def test_a_name_is_found_in_any_spelling(name: str) -> None:
    v = View.parse(message(WEB))
    found = v.lookup(name)
    assert found is not None and found.name == "web"


@pytest.mark.parametrize(
    "name",
    ["nope", "web.example.com", "web.other", "x.web.netstack.internal", "", "netstack.internal"],
)
def test_other_names_are_not_found(name: str) -> None:
    assert View.parse(message(WEB)).lookup(name) is None


def test_names_under_the_domain_and_service_labels() -> None:
    v = View.parse(message(WEB, domain="Corp.Internal."))
    assert v.lookup("web.corp.internal") is not None
    assert v.under_domain("new.corp.internal.") and not v.under_domain("new")
    assert v.service_name("NEW.corp.internal") == "new"
    assert v.service_name("a.b.corp.internal") is None
    assert v.service_name("web.example.com") is None


def test_lookup_by_vip_either_family_and_the_blocks() -> None:
    v = View.parse(message(WEB, DB))
    assert v.by_vip(ip("198.18.0.1")) is v.by_vip(ip("fd4e:5344::1")) is v.lookup("web")
    assert v.by_vip(ip("198.18.0.9")) is None
    assert v.in_vip_block(ip("198.18.255.255")) and v.in_vip_block(ip("fd4e:5344::ffff"))
    assert not v.in_vip_block(ip("198.19.0.1")) and not v.in_vip_block(ip("fd4e:5345::1"))
    assert not v.in_vip_block(ip("10.0.2.2")) and not v.in_vip_block(b"")


def test_the_blocks_come_from_the_view() -> None:
    msg = message(WEB)
    msg["view"]["vip_cidr"] = "100.64.0.0/10"
    v = View.parse(msg)
    assert v.in_vip_block(ip("100.100.0.1")) and not v.in_vip_block(ip("198.18.0.1"))


def test_before_any_view_the_defaults_hold() -> None:
    v = View()
    assert v.in_vip_block(ip("198.18.3.4")) and v.in_vip_block(ip("fd4e:5344::7"))
    assert v.under_domain("web.netstack.internal") and v.lookup("web") is None


def test_instances_for_a_vip_and_port() -> None:
    v = View.parse(message(WEB, DB))
    assert [i.host_port for i in v.instances(ip("198.18.0.1"), 8080)] == [40123, 40124]
    assert [i.host_port for i in v.instances(ip("fd4e:5344::1"), 9090)] == [40125]
    assert v.instances(ip("198.18.0.2"), 8080) == []
    assert v.instances(ip("198.18.0.7"), 8080) == []


@pytest.mark.parametrize(
    "client, inst, ok",
    [
        ({}, {"zone": "default"}, True),
        ({}, {"zone": "blue"}, False),
        ({}, {}, False),
        ({"zone": "blue"}, {"zone": "blue", "tier": "web"}, True),
        ({"zone": "blue"}, {"zone": "default"}, False),
        ({"zone": "blue", "team": "a"}, {"zone": "red", "team": "a"}, True),
        ({"team": "a"}, {"team": "b"}, False),
    ],
)
def test_policy_shares_at_least_one_pair(
    client: dict[str, str], inst: dict[str, str], ok: bool
) -> None:
    assert allowed(client, inst) is ok


def test_round_robin_among_allowed_instances_per_vip_and_port() -> None:
    web = service(
        "web",
        1,
        instance(80, 1001),
        instance(80, 1002, zone="blue"),
        instance(80, 1003),
        instance(81, 2001),
    )
    v = View.parse(message(web))
    vip, vip6 = ip("198.18.0.1"), ip("fd4e:5344::1")
    picks = [v.route(vip, 80, {}) for _ in range(4)]
    assert [p.host_port for p in picks if isinstance(p, Instance)] == [1001, 1003, 1001, 1003]
    first = v.route(vip, 81, {})
    assert isinstance(first, Instance) and first.host_port == 2001  # its own rotation
    six = v.route(vip6, 80, {})  # IPv4 and IPv6 share the service's rotation
    assert isinstance(six, Instance) and six.host_port == 1001
    blue = v.route(vip, 80, {"zone": "blue"})
    assert isinstance(blue, Instance) and blue.host_port == 1002


def test_round_robin_goes_on_in_the_next_view() -> None:
    v1 = View.parse(message(WEB))
    vip = ip("198.18.0.1")
    first = v1.route(vip, 8080, {})
    v2 = View.parse(message(WEB), v1)
    second = v2.route(vip, 8080, {})
    assert isinstance(first, Instance) and isinstance(second, Instance)
    assert (first.host_port, second.host_port) == (40123, 40124)


def test_route_says_why_there_is_no_instance() -> None:
    v = View.parse(message(WEB, DB))
    assert v.route(ip("198.18.0.9"), 8080, {}) is Route.UNKNOWN
    assert v.route(ip("198.18.0.2"), 8080, {}) is Route.WAIT  # reserved, not served
    assert v.route(ip("198.18.0.1"), 1234, {}) is Route.WAIT  # served, not on this port
    assert v.route(ip("198.18.0.1"), 8080, {"zone": "blue"}) is Route.DENIED


@pytest.mark.parametrize(
    "msg",
    [
        [],
        {"not": "a view"},
        {"view": []},
        {"view": {"services": {}}},
        {"view": {"vip_cidr": "fd4e::/64"}},
        {"view": {"vip_cidr": "nonsense"}},
        {"view": {"domain": ""}},
        {"view": {"services": [{"name": "web", "vip": "198.18.0.1"}]}},
        {"view": {"services": [{"name": "a b", "vip": "198.18.0.1", "vip6": "fd4e:5344::1"}]}},
        {"view": {"services": [{"name": "web", "vip": "fd4e:5344::1", "vip6": "fd4e:5344::1"}]}},
        message(service("web", 1, {"port": 0, "host": "127.0.0.1", "host_port": 1})),
        message(service("web", 1, {"port": 80, "host": "localhost", "host_port": 1})),
        message(service("web", 1, {"port": 80, "host": "127.0.0.1", "host_port": True})),
        message(service("web", 1, {"port": 80, "host": "127.0.0.1", "host_port": 1, "labels": []})),
    ],
)
def test_malformed_views_raise_view_error(msg: Any) -> None:
    with pytest.raises(ViewError):
        View.parse(msg)


def test_missing_optional_fields_take_the_defaults() -> None:
    v = View.parse({"view": {}})
    assert v.services == () and v.domain == "netstack.internal"
    assert v.in_vip_block(ip("198.18.0.1"))


def test_a_service_gone_from_the_view_takes_its_turns_with_it() -> None:
    v1 = View.parse(message(WEB, service("old", 2, instance(80, 1))))
    v1.route(ip("198.18.0.2"), 80, {})
    v1.route(ip("198.18.0.1"), 8080, {})
    v2 = View.parse(message(WEB), v1)
    assert v2.turns == {(ip("198.18.0.1"), 8080): 1}
