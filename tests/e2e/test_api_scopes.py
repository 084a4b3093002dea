"""Every API route checks its scope, and On-Behalf-Of reaches only the
caller's own subusers.

The routes are read at test time from the OpenAPI document the server
serves (a Rust test, crates/postern-api/tests/routes.rs, keeps that document
equal to the routes the router registers), and the table below must name
each one: a route added without an entry fails the test. For each route, a
key with every scope except the one(s) it needs gets 403 naming the missing
scope, and a key with only those scopes gets neither 401 nor 403."""

import json

from conftest import api, auth_plain

FULL = "full_access"
ID = "999999"  # an id nobody has: with the scope, such calls get 404

# (method, path) -> (scopes needed, request body or None). Bodies are well
# formed, so nothing but the scope can refuse them before the handler; with
# the scope, every call either succeeds or fails for another reason than
# authorization (404 for the made-up ids, 400 for the TOTP code).
ROUTES = {
    # Any key may list its own scopes.
    ("GET", "/v3/scopes"): ([], None),
    ("GET", "/v3/api_keys"): (["api_keys.read"], None),
    ("POST", "/v3/api_keys"): (["api_keys.create"], {"name": "scoped", "scopes": ["api_keys.create"]}),
    ("GET", "/v3/api_keys/{id}"): (["api_keys.read"], None),
    ("PUT", "/v3/api_keys/{id}"): (["api_keys.update"], {"name": "renamed", "scopes": []}),
    ("PATCH", "/v3/api_keys/{id}"): (["api_keys.update"], {"name": "renamed"}),
    ("DELETE", "/v3/api_keys/{id}"): (["api_keys.delete"], None),
    ("GET", "/v3/subusers"): (["subusers.read"], None),
    ("POST", "/v3/subusers"): (["subusers.create"], {
        "username": "scope-sub", "email": "ops@example.org",
        "password": "violet-anchor-tundra-42", "ips": []}),
    ("PATCH", "/v3/subusers/{name}"): (["subusers.update"], {"disabled": False}),
    ("DELETE", "/v3/subusers/{name}"): (["subusers.delete"], None),
    ("GET", "/v3/access_settings/whitelist"): (["access_settings.whitelist.read"], None),
    # All of 127/8, so the rule added locks no test client out.
    ("POST", "/v3/access_settings/whitelist"): (["access_settings.whitelist.create"], {"ips": [{"ip": "127.0.0.0/8"}]}),
    ("DELETE", "/v3/access_settings/whitelist"): (["access_settings.whitelist.delete"], {"ids": [int(ID)]}),
    ("GET", "/v3/access_settings/whitelist/{id}"): (["access_settings.whitelist.read"], None),
    ("DELETE", "/v3/access_settings/whitelist/{id}"): (["access_settings.whitelist.delete"], None),
    ("GET", "/v3/audit"): ([FULL], None),
    ("POST", "/v3/user/totp"): ([FULL], None),
    ("DELETE", "/v3/user/totp"): ([FULL], None),
    ("POST", "/v3/user/totp/verify"): ([FULL], {"code": "000000"}),
    ("GET", "/v3/suppression/bounces"): (["suppression.bounces.read"], None),
    ("DELETE", "/v3/suppression/bounces"): (["suppression.bounces.delete"], {"emails": ["nobody@example.net"]}),
    ("GET", "/v3/suppression/bounces/{email}"): (["suppression.bounces.read"], None),
    ("DELETE", "/v3/suppression/bounces/{email}"): (["suppression.bounces.delete"], None),
    ("GET", "/v3/events"): (["messages.read"], None),
    ("GET", "/v3/messages/{msg_id}"): (["messages.read"], None),
    ("GET", "/v3/queue"): (["queue.read"], None),
    ("POST", "/v3/queue/retry"): (["queue.update"], None),
    ("GET", "/v3/queue/{id}"): (["queue.read"], None),
    ("DELETE", "/v3/queue/{id}"): (["queue.delete"], None),
    ("POST", "/v3/queue/{id}/retry"): (["queue.update"], None),
    ("GET", "/v3/quarantine"): (["quarantine.read"], None),
    ("GET", "/v3/quarantine/{id}"): (["quarantine.read"], None),
    ("DELETE", "/v3/quarantine/{id}"): (["quarantine.delete"], None),
    ("POST", "/v3/quarantine/{id}/release"): (["quarantine.update"], None),
    ("GET", "/v3/reports"): (["reports.read"], None),
    ("GET", "/v3/reports/{id}"): (["reports.read"], None),
    ("GET", "/v3/user/webhooks/event/settings"): (["user.webhooks.event.settings.read"], None),
    ("PATCH", "/v3/user/webhooks/event/settings"): (["user.webhooks.event.settings.update"], {"enabled": False}),
    ("GET", "/v3/user/webhooks/event/settings/signed"): (["user.webhooks.event.settings.read"], None),
    ("PATCH", "/v3/user/webhooks/event/settings/signed"): (["user.webhooks.event.settings.update"], {"enabled": False}),
    # A destination the webhook policy refuses (plain http, loopback): 400
    # with the scope, and nothing is posted.
    ("POST", "/v3/user/webhooks/event/test"): (["user.webhooks.event.test.create"], {"url": "http://127.0.0.1:9/hook"}),
    ("GET", "/v3/whitelabel/domains"): (["whitelabel.read"], None),
    ("POST", "/v3/whitelabel/domains"): (["whitelabel.create"], {"domain": "scopes.example"}),
    ("GET", "/v3/whitelabel/domains/{id}"): (["whitelabel.read"], None),
    ("DELETE", "/v3/whitelabel/domains/{id}"): (["whitelabel.delete"], None),
    ("POST", "/v3/whitelabel/domains/{id}/validate"): (["whitelabel.update"], None),
    ("POST", "/v3/mail/send"): (["mail.send"], {
        "personalizations": [{"to": [{"email": "reader@example.net"}]}],
        "from": {"email": "news@example.org"}, "subject": "s",
        "content": [{"type": "text/plain", "value": "scoped"}]}),
    ("GET", "/v3/verified_senders"): (["verified_senders.read"], None),
    ("POST", "/v3/verified_senders"): (["verified_senders.create"], {
        "nickname": "news", "from_email": "news@example.org", "from_name": "News",
        "reply_to": "news@example.org"}),
    ("PATCH", "/v3/verified_senders/{id}"): (["verified_senders.update"], {"nickname": "renamed"}),
    ("DELETE", "/v3/verified_senders/{id}"): (["verified_senders.delete"], None),
    ("POST", "/v3/verified_senders/resend/{id}"): (["verified_senders.create"], None),
}
# Routes whose document says they need no key at all: the verification
# link (a made-up token is a 4xx other than 401), the operator's
# endpoints (200), and the MTA-STS policy (404: this server has none).
OPEN = {("GET", "/v3/verified_senders/verify/{token}"): range(400, 500),
        ("GET", "/.well-known/mta-sts.txt"): [404],
        ("GET", "/healthz"): [200], ("GET", "/metrics"): [200], ("GET", "/v3/openapi.json"): [200]}

PARAMS = {"{id}": ID, "{name}": "no-such-subuser", "{email}": "nobody@example.net",
          "{msg_id}": "no-such-message", "{token}": "no-such-token"}


def concrete(path):
    for name, value in PARAMS.items():
        path = path.replace(name, value)
    return path


def served_routes(p):
    """(method, path, needs a key) for every operation the served OpenAPI
    document lists."""
    status, spec = api(p, None, "GET", "/v3/openapi.json")
    assert status == 200
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                out.append((method.upper(), path, op.get("security") != []))
    return out


class Keys:
    """Keys of the admin account with given scopes, made over the API."""

    def __init__(self, p):
        self.p, self.made = p, {}

    def get(self, scopes):
        wanted = tuple(sorted(scopes))
        if wanted not in self.made:
            status, body = api(self.p, self.p.admin_key, "POST", "/v3/api_keys",
                               {"name": "scope test", "scopes": list(wanted)})
            assert status == 201, (wanted, status, body)
            assert sorted(body["scopes"]) == list(wanted), body
            self.made[wanted] = body["api_key"]
        return self.made[wanted]


def test_every_route_checks_its_scope(postern):
    p = postern
    routes = served_routes(p)
    protected = {(m, path) for m, path, keyed in routes if keyed}
    assert {(m, path) for m, path, keyed in routes if not keyed} == set(OPEN)
    assert protected - set(ROUTES) == set(), "routes without an entry in ROUTES"
    assert set(ROUTES) - protected == set(), "entries for routes the server does not list"

    status, body = api(p, p.admin_key, "GET", "/v3/scopes")
    every = body["scopes"]  # the admin key has full_access: every scope, expanded
    assert FULL not in every and "queue.update" in every, every
    keys = Keys(p)
    checked = 0
    for (method, path), (needed, body) in ROUTES.items():
        url = concrete(path)
        if needed:
            without = keys.get([s for s in every if s not in needed])
            status, reply = api(p, without, method, url, body)
            assert status == 403, (method, path, status, reply)
            message = reply["errors"][0]["message"]
            assert any(f"lacks the {s} scope" in message for s in needed), (method, path, reply)
        # A route that needs no scope is called with an unrelated one (a
        # key needs at least one).
        status, reply = api(p, keys.get(needed or ["suppression.bounces.read"]), method, url, body)
        assert status not in (401, 403), (method, path, status, reply)
        checked += 1
    assert checked == len(protected)

    # The open routes answer without a key.
    for (method, path), expected in OPEN.items():
        status, _ = api(p, None, method, concrete(path))
        assert status != 401 and status in expected, (method, path, status)


def key_for(p, account):
    return json.loads(p.cli("key", "create", "--account", account, "--json").stdout)["key"]


def test_on_behalf_of_reaches_only_the_callers_own_subusers(postern):
    p = postern
    sub = {"email": "ops@example.org", "password": "violet-anchor-tundra-42", "ips": []}
    assert api(p, p.admin_key, "POST", "/v3/subusers", {"username": "alpha-sub", **sub})[0] == 201
    p.cli("account", "create", "bravo")
    bravo = key_for(p, "bravo")
    assert api(p, bravo, "POST", "/v3/subusers", {"username": "bravo-sub", **sub})[0] == 201

    def as_(key, subuser, method="GET", path="/v3/api_keys", body=None):
        return api(p, key, method, path, body, headers={"On-Behalf-Of": subuser})

    # The caller's own subuser: the call acts for it.
    status, body = as_(p.admin_key, "alpha-sub", "POST", "/v3/api_keys", {"name": "k", "scopes": ["mail.send"]})
    assert status == 201, body
    assert as_(p.admin_key, "alpha-sub")[0] == 200

    # Another tenant's subuser, that tenant itself, or nobody: one answer,
    # 403, so the header tells nothing about other tenants' accounts.
    refusals = [
        as_(p.admin_key, "bravo-sub"),
        as_(p.admin_key, "bravo-sub", "POST", "/v3/api_keys", {"name": "k", "scopes": ["mail.send"]}),
        as_(p.admin_key, "bravo-sub", "POST", "/v3/mail/send", {
            "personalizations": [{"to": [{"email": "reader@example.net"}]}],
            "from": {"email": "news@example.org"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "x"}]}),
        as_(p.admin_key, "bravo"),
        as_(p.admin_key, "no-such-account"),
        as_(bravo, "alpha-sub"),
    ]
    assert all(r == refusals[0] for r in refusals), refusals
    assert refusals[0][0] == 403, refusals[0]
    # Nothing was made in bravo-sub's name.
    status, keys = as_(bravo, "bravo-sub")
    assert status == 200 and keys["result"] == [], keys
    assert json.loads(p.cli("events", "--json").stdout) == []

    # The same rule for an SMTP authorization identity (RFC 4616 authzid).
    assert auth_plain(p, "apikey", p.admin_key, authzid="alpha-sub")[0] == 235
    assert auth_plain(p, "apikey", p.admin_key, authzid="bravo-sub")[0] == 535
    assert auth_plain(p, "apikey", bravo, authzid="alpha-sub")[0] == 535
