"""No domain squatting (issue 10 item 11): an unverified domain is only a
claim. Another tenant may add the same domain; whoever proves ownership in
DNS gets it, the competing claims (and their keys) are deleted and
audited, and the loser can never send or sign as the domain."""
import json
import tempfile
import urllib.request

from dnslib.server import DNSServer

from conftest import Postern, free_port, send_as
from conftest import api as conftest_api
from test_dkim import MutableZone


def api(p, method, path, key, body=None):
    return conftest_api(p, key, method, path, body)


def test_a_squatters_claim_does_not_block_the_owner(sink):
    zone = MutableZone()
    port = free_port()
    server = DNSServer(zone, port=port, address="127.0.0.1")
    server.start_thread()
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, enforce_senders=True,
                    extra_config=f'[dns]\nnameservers = ["127.0.0.1:{port}"]\n').start()
        try:
            p.read_admin_key()
            p.cli("account", "create", "squatter")
            squatter = json.loads(p.cli("key", "create", "--account", "squatter", "--json").stdout)["key"]

            # The squatter adds the victim's domain first.
            status, claim = api(p, "POST", "/v3/whitelabel/domains", squatter, {"domain": "victim.example"})
            assert status == 201 and claim["valid"] is False

            # The rightful owner can still add it (on main: 400 "already added").
            status, mine = api(p, "POST", "/v3/whitelabel/domains", p.admin_key, {"domain": "victim.example"})
            assert status == 201, mine
            assert mine["id"] != claim["id"]
            # An unverified claim is not a sender: neither may send as it.
            assert send_as(p, squatter, "x@victim.example", "x@victim.example")[0] == 550

            # The owner publishes its records and proves ownership.
            for rec in mine["dns"].values():
                if rec["required"]:
                    zone.publish({"name": rec["host"], "type": rec["type"].upper(), "value": rec["data"]})
            status, v = api(p, "POST", f"/v3/whitelabel/domains/{mine['id']}/validate", p.admin_key)
            assert status == 200 and v["valid"] is True, v

            # The squatter's claim is gone, with its keys, and audited.
            status, _ = api(p, "GET", f"/v3/whitelabel/domains/{claim['id']}", squatter)
            assert status == 404
            assert api(p, "GET", "/v3/whitelabel/domains", squatter) == (200, [])
            retired = json.loads(p.cli("audit", "--kind", "domain.claim.retired", "--json").stdout)
            assert [(e["account"], f"id={claim['id']}" in e["detail"]) for e in retired] == [("squatter", True)]
            # ...it cannot claim the verified domain again...
            status, r = api(p, "POST", "/v3/whitelabel/domains", squatter, {"domain": "victim.example"})
            assert status == 400 and r["errors"][0]["field"] == "domain"
            # ...nor send as it, while the owner can, signed with its keys.
            assert send_as(p, squatter, "x@victim.example", "x@victim.example")[0] == 550
            assert send_as(p, p.admin_key, "x@victim.example", "x@victim.example")[0] == 250
            msg = sink.wait_for(1)[-1]
            assert b"d=victim.example" in msg["data"]
            listed = json.loads(p.cli("domain", "list", "--json").stdout)
            assert [(x["domain"], x["account"], x["valid"]) for x in listed] == [("victim.example", "admin", True)]
        finally:
            p.stop()
            server.stop()


def test_the_cli_names_the_claim_when_several_exist(postern):
    postern.cli("account", "create", "b")
    postern.cli("domain", "add", "shared.example", "--account", "b")
    postern.cli("domain", "add", "shared.example", "--account", "admin")
    r = postern.cli("domain", "verify", "shared.example", "--operator", check=False)
    assert r.returncode != 0 and "--account" in r.stderr
    postern.cli("domain", "verify", "shared.example", "--operator", "--account", "admin")
    listed = json.loads(postern.cli("domain", "list", "--json").stdout)
    assert [(x["account"], x["valid"]) for x in listed] == [("admin", True)]
    kinds = [e["kind"] for e in json.loads(postern.cli("audit", "--kind", "domain.", "--json").stdout)]
    assert "domain.claim.retired" in kinds
