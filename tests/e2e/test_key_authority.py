"""A key is never more powerful than the key that made it, and On-Behalf-Of
over HTTP is checked as an SMTP authzid is: a disabled subuser, or one
whose IP allowlist leaves the client out, cannot be acted for."""

import json

from conftest import api


def cli_json(p, *args):
    return json.loads(p.cli(*args, "--json").stdout)


def test_child_keys_inherit_networks_and_expiry_and_cannot_widen_them(postern):
    p = postern
    parent = cli_json(p, "key", "create", "--account", "admin", "--allow-ip", "127.0.0.0/8", "--expires-in", "1h")
    status, child = api(p, parent["key"], "POST", "/v3/api_keys", {"name": "child"})
    assert status == 201, child
    assert child["allowed_ips"] == ["127.0.0.0/8"], "networks are inherited when not given"
    listed = {k["id"]: k for k in cli_json(p, "key", "list")}
    assert listed[child["api_key_id"]]["expires_at"] == listed[parent["id"]]["expires_at"], "expiry is inherited"

    status, narrower = api(p, parent["key"], "POST", "/v3/api_keys", {"name": "n", "allowed_ips": ["127.0.0.1"]})
    assert status == 201 and narrower["allowed_ips"] == ["127.0.0.1/32"], narrower
    for wider in (["0.0.0.0/0"], ["10.0.0.1"], ["127.0.0.0/8", "::/0"]):
        status, body = api(p, parent["key"], "POST", "/v3/api_keys", {"name": "w", "allowed_ips": wider})
        assert status == 403, (wider, status, body)
        assert body["errors"][0]["field"] == "allowed_ips"
    # A child of the child is bound the same way.
    status, grandchild = api(p, child["api_key"], "POST", "/v3/api_keys", {"name": "gc", "allowed_ips": ["0.0.0.0/0"]})
    assert status == 403, grandchild


def test_a_key_cannot_mint_a_full_access_key_with_an_empty_scope_list(postern):
    p = postern
    status, creator = api(p, p.admin_key, "POST", "/v3/api_keys", {"name": "creator", "scopes": ["api_keys.create"]})
    assert status == 201, creator
    # The key store reads "no scopes" as full access; an explicit empty
    # list must not get there.
    status, body = api(p, creator["api_key"], "POST", "/v3/api_keys", {"name": "x", "scopes": []})
    assert status == 400 and body["errors"][0]["field"] == "scopes", (status, body)
    status, body = api(p, creator["api_key"], "POST", "/v3/api_keys", {"name": "y", "scopes": ["full_access"]})
    assert status == 403, (status, body)
    # Left out, the scopes are the creator's own.
    status, child = api(p, creator["api_key"], "POST", "/v3/api_keys", {"name": "z"})
    assert status == 201 and child["scopes"] == ["api_keys.create"], child
    full = [k for k in cli_json(p, "key", "list") if "full_access" in k["scopes"]]
    assert len(full) == 1, "only the first-start admin key has full access"


def test_on_behalf_of_refuses_disabled_subusers_and_ip_allowlists(postern):
    p = postern
    p.cli("account", "create", "acme")
    p.cli("subuser", "create", "news", "--account", "acme")
    p.cli("subuser", "create", "billing", "--account", "acme")
    key = cli_json(p, "key", "create", "--account", "acme")["key"]

    def as_subuser(name):
        import urllib.request
        req = urllib.request.Request(
            f"http://127.0.0.1:{p.ports['http']}/v3/api_keys",
            headers={"Authorization": f"Bearer {key}", "On-Behalf-Of": name},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert as_subuser("news") == 200
    assert as_subuser("billing") == 200
    p.cli("account", "disable", "news")
    assert as_subuser("news") == 403, "a disabled subuser cannot be acted for"
    p.cli("ip-access", "add", "billing", "192.0.2.0/24")
    assert as_subuser("billing") == 403, "the subuser's IP allowlist applies"
    p.cli("ip-access", "remove", "billing", "192.0.2.0/24")
    assert as_subuser("billing") == 200
    assert as_subuser("admin") == 403, "not a subuser of acme"


def test_on_behalf_of_may_still_edit_the_allowlist_that_shuts_the_caller_out(postern):
    """The one exception to the subuser's IP allowlist under On-Behalf-Of:
    its own allowlist routes, so a parent whose subuser's rules leave the
    parent's address out can still see and fix them."""
    p = postern
    p.cli("account", "create", "acme")
    p.cli("subuser", "create", "news", "--account", "acme")
    key = cli_json(p, "key", "create", "--account", "acme")["key"]
    as_news = {"On-Behalf-Of": "news"}
    # We connect from 127.0.0.1: outside the subuser's only network.
    p.cli("ip-access", "add", "news", "192.0.2.0/24")
    assert api(p, key, "GET", "/v3/api_keys", headers=as_news)[0] == 403
    status, rules = api(p, key, "GET", "/v3/access_settings/whitelist", headers=as_news)
    assert status == 200, rules
    assert [r["ip"] for r in rules["result"]] == ["192.0.2.0/24"]
    status, _ = api(p, key, "DELETE", f"/v3/access_settings/whitelist/{rules['result'][0]['id']}", headers=as_news)
    assert status == 204
    # Without the rule, acting for the subuser works again.
    assert api(p, key, "GET", "/v3/api_keys", headers=as_news)[0] == 200
