"""The SendGrid-compatible management API, driven with SendGrid's own Python
library by changing only its base URL, plus curl for the raw shapes."""

import json
import smtplib
import ssl
import re
import subprocess
import urllib.error
import urllib.request

import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from conftest import ROOT


def client(postern, key, **kw):
    return SendGridAPIClient(api_key=key, host=f"http://127.0.0.1:{postern.ports['http']}", **kw)


def body(resp):
    return json.loads(resp.body) if resp.body else None


def can_send(postern, key):
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        try:
            s.login("apikey", key)
        except smtplib.SMTPAuthenticationError:
            return False
        code, _ = s.mail("app@example.org")
        return code == 250


def test_api_keys_with_the_sendgrid_library(postern):
    sg = client(postern, postern.admin_key)
    r = sg.client.api_keys.post(request_body={"name": "ci sender", "scopes": ["mail.send"]})
    assert r.status_code == 201
    created = body(r)
    assert created["api_key"].startswith("pst_") and created["scopes"] == ["mail.send"]
    assert can_send(postern, created["api_key"])

    listed = body(sg.client.api_keys.get())["result"]
    assert {"api_key_id": created["api_key_id"], "name": "ci sender"} in listed
    assert all("api_key" not in k for k in listed), "secrets are never listed"
    one = body(sg.client.api_keys._(created["api_key_id"]).get())["result"][0]
    assert one["scopes"] == ["mail.send"]
    r = sg.client.api_keys._(created["api_key_id"]).patch(request_body={"name": "renamed"})
    assert body(r)["name"] == "renamed"

    # The new key may send but not manage keys.
    limited = client(postern, created["api_key"])
    with pytest.raises(HTTPError) as e:
        limited.client.api_keys.get()
    assert e.value.status_code == 403
    assert "api_keys.read" in json.loads(e.value.body)["errors"][0]["message"]
    assert body(limited.client.scopes.get())["scopes"] == ["mail.send"]
    # Nor grant itself more than it has.
    reader = body(sg.client.api_keys.post(request_body={"name": "reader", "scopes": ["api_keys.create", "api_keys.read"]}))
    with pytest.raises(HTTPError) as e:
        client(postern, reader["api_key"]).client.api_keys.post(request_body={"name": "x", "scopes": ["mail.send"]})
    assert e.value.status_code == 403

    # Revocation takes effect for the very next AUTH and API call.
    assert sg.client.api_keys._(created["api_key_id"]).delete().status_code == 204
    assert not can_send(postern, created["api_key"])
    with pytest.raises(HTTPError) as e:
        limited.client.scopes.get()
    assert e.value.status_code == 401


def test_subusers_and_whitelist(postern):
    sg = client(postern, postern.admin_key)
    r = sg.client.subusers.post(request_body={"username": "transactional", "email": "ops@example.org", "password": "violet-anchor-tundra-42", "ips": []})
    assert r.status_code == 201 and body(r)["username"] == "transactional"
    subs = body(sg.client.subusers.get())
    assert subs == [{"id": "transactional", "username": "transactional", "email": "ops@example.org", "disabled": False}]
    with pytest.raises(HTTPError) as e:
        sg.client.subusers.post(request_body={"username": "weak", "password": "password1234"})
    assert e.value.status_code == 400 and json.loads(e.value.body)["errors"][0]["field"] == "password"

    # A key for the subuser, made by the parent acting on its behalf.
    as_sub = client(postern, postern.admin_key, impersonate_subuser="transactional")
    subkey = body(as_sub.client.api_keys.post(request_body={"name": "tx", "scopes": ["mail.send"]}))
    assert can_send(postern, subkey["api_key"])
    assert sg.client.subusers._("transactional").patch(request_body={"disabled": True}).status_code == 204
    assert not can_send(postern, subkey["api_key"])
    assert sg.client.subusers._("transactional").patch(request_body={"disabled": False}).status_code == 204
    assert can_send(postern, subkey["api_key"])

    # The whitelist of the subuser (on behalf): only 127.0.0.2 may log in.
    r = as_sub.client.access_settings.whitelist.post(request_body={"ips": [{"ip": "127.0.0.2"}, {"ip": "10.*.*.*"}]})
    assert r.status_code == 201
    rules = body(r)["result"]
    assert [x["ip"] for x in rules] == ["127.0.0.2/32", "10.0.0.0/8"]
    assert not can_send(postern, subkey["api_key"])  # we connect from 127.0.0.1
    assert as_sub.client.access_settings.whitelist.delete(request_body={"ids": [x["id"] for x in rules]}).status_code == 204
    assert can_send(postern, subkey["api_key"])
    assert sg.client.subusers._("transactional").delete().status_code == 204
    assert not can_send(postern, subkey["api_key"])


def test_errors_and_auth_with_curl(postern):
    base = f"http://127.0.0.1:{postern.ports['http']}"
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", base + "/v3/api_keys"], capture_output=True, text=True)
    text, code = out.stdout.rsplit("\n", 1)
    assert code == "401"
    assert json.loads(text) == {"errors": [{"field": None, "message": "authorization required"}]}
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {postern.admin_key}",
         "-H", "Content-Type: application/json", "-d", '{"scopes":["mail.send"]}', base + "/v3/api_keys"],
        capture_output=True, text=True,
    )
    text, code = out.stdout.rsplit("\n", 1)
    assert code == "400" and json.loads(text)["errors"][0]["field"] == "name"


API_SOURCES = ROOT / "crates" / "postern-api" / "src"
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def served_methods(base, path):
    """The methods the live server routes for `path` (its {parameters}
    filled in), from the Allow header of its 405 to an OPTIONS request
    (RFC 9110 §15.5.6: a 405 lists the methods the resource supports), or
    None for a path it does not route (404)."""
    url = base + re.sub(r"\{[^}]+\}", "x1", path)
    req = urllib.request.Request(url, method="OPTIONS")
    try:
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        assert e.code == 405, (path, e.code)
        return {m.strip() for m in e.headers["Allow"].split(",")} & HTTP_METHODS
    raise AssertionError(f"OPTIONS {path} was answered: no 405")


def test_openapi_documents_every_route_and_only_those(postern):
    """The served OpenAPI document and the routes the server serves agree
    both ways: every path the router registers is documented with exactly
    the methods the live server answers, and every documented path and
    method is served."""
    base = f"http://127.0.0.1:{postern.ports['http']}"
    spec = json.loads(urllib.request.urlopen(base + "/v3/openapi.json", timeout=10).read())
    assert spec["openapi"].startswith("3.")
    documented = {
        path: {m.upper() for m in ops if m.upper() in HTTP_METHODS | {"HEAD", "OPTIONS", "TRACE"}}
        for path, ops in spec["paths"].items()
    }
    # Every path the router registers: axum's .route() calls are the only
    # way routes are added (no nest, fallback or route_service).
    # Unit-test modules (at the end of a file, after #[cfg(test)]) build
    # routers of their own that the server never serves.
    source = "\n".join(f.read_text().split("#[cfg(test)]")[0] for f in sorted(API_SOURCES.rglob("*.rs")))
    assert not re.search(r"\.(nest|nest_service|route_service|fallback)\(", source)
    registered = set(re.findall(r'\.route\(\s*"([^"]+)"', source))
    assert len(registered) >= 30, registered
    served = {path: served_methods(base, path) for path in registered | set(documented)}
    # The probe tells a routed path from an unrouted one.
    assert served_methods(base, "/v3/no_such_resource") is None
    mismatched = {
        p: {"documented": documented.get(p), "served": served.get(p)}
        for p in set(served) | set(documented) if documented.get(p) != served.get(p)
    }
    assert served == documented, mismatched
