"""Account identity is permanent: deleting a subuser retires everything it
owned, and another tenant that creates a subuser with the same name starts
with nothing of it: no sending domain (nor its DKIM keys), no keys, no send
log, no IP rules. Driven with the CLI, curl-like HTTP calls and smtplib."""

import json

from conftest import api, send_as


def key_for(p, account, *scopes):
    args = ["key", "create", "--account", account, "--json"]
    if scopes:
        args += ["--scopes", ",".join(scopes)]
    return json.loads(p.cli(*args).stdout)["key"]


def test_a_reused_subuser_name_inherits_nothing(strict, sink):
    p = strict
    p.cli("account", "create", "acme")
    p.cli("account", "create", "rival")
    acme = key_for(p, "acme")
    rival = key_for(p, "rival")

    # acme's subuser "shop" sends DKIM-signed mail as its verified domain.
    assert api(p, acme, "POST", "/v3/subusers", {"username": "shop", "email": "ops@shop.example", "password": "Not-a-common-passw0rd!", "ips": []})[0] == 201
    p.cli("domain", "add", "shop.example", "--account", "shop")
    p.cli("domain", "verify", "shop.example", "--operator")
    p.cli("ip-access", "add", "shop", "127.0.0.0/8")
    old_key = key_for(p, "shop", "mail.send")
    assert send_as(p, old_key, "ceo@shop.example", "ceo@shop.example") == (250, "")
    sink.wait_for(1)

    status, _ = api(p, acme, "DELETE", "/v3/subusers/shop")
    assert status == 204
    audit = json.loads(p.cli("audit", "--kind", "subuser.delete", "--json").stdout)
    assert "domains:1" in audit[-1]["detail"] and "api_keys:1" in audit[-1]["detail"], audit[-1]

    # The old key died with the account.
    status, _ = api(p, old_key, "GET", "/v3/api_keys")
    assert status == 401

    # rival takes the name.
    assert api(p, rival, "POST", "/v3/subusers", {"username": "shop", "email": "x@rival.example", "password": "Not-a-common-passw0rd!", "ips": []})[0] == 201
    new_key = key_for(p, "shop")

    # Nothing of the first shop is there: domains, keys, send log, IP rules, queue.
    assert api(p, new_key, "GET", "/v3/whitelabel/domains")[1] == []
    status, keys = api(p, new_key, "GET", "/v3/api_keys")
    assert status == 200 and len(keys["result"]) == 1, keys
    assert api(p, new_key, "GET", "/v3/events") == (200, {"events": []})
    shop_events = json.loads(p.cli("events", "--account", "shop", "--json").stdout)
    assert shop_events == [], shop_events
    assert json.loads(p.cli("ip-access", "list", "shop", "--json").stdout) == []
    assert json.loads(p.cli("domain", "list", "--account", "shop", "--json").stdout) == []

    # It cannot send as the first shop's domain, nor sign with its keys.
    code, text = send_as(p, new_key, "ceo@shop.example", "ceo@shop.example")
    assert code == 550 and "5.7.1" in text, (code, text)
    assert len(sink.messages) == 1, "nothing more was delivered"

    # The domain can be claimed anew (with fresh keys) by its new owner.
    p.cli("domain", "add", "shop.example", "--account", "shop")
