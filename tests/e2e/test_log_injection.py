"""No peer-controlled text reaches a log or a terminal raw: an SMTP AUTH
user name with CR/LF and ANSI escapes is refused and shows up escaped in
the audit log, `postern audit` and the server log; names with control
characters are refused by the API; a remote reply with escapes prints
escaped in `postern events`."""

import base64
import json
import smtplib
import ssl

from conftest import api

EVIL = "evil\r\n2026-01-01T00:00:00Z auth.success actor=admin\x1b[2J\x1b]0;pwned\x07\u009b31m\u202e"
RAW = ["\r", "\x1b", "\x07", "\u009b", "\u202e"]


def test_auth_user_names_are_refused_and_escaped_everywhere(postern):
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        s.ehlo()
        token = base64.b64encode(b"\0" + EVIL.encode() + b"\0" + b"pst_not-a-key").decode()
        code, _ = s.docmd("AUTH", "PLAIN " + token)
        assert code == 535
    audit = postern.cli("audit", "--kind", "auth.failure").stdout
    assert "evil\\r\\n2026-01-01" in audit, audit
    lines = [l for l in audit.splitlines() if "evil" in l or "auth.success" in l]
    assert len(lines) == 1, f"the user name forged a line: {lines}"
    for raw in RAW + ["\n2026"]:
        assert raw not in audit, repr(raw)
    raw_json = postern.cli("audit", "--kind", "auth.failure", "--json").stdout
    for raw in RAW:
        assert raw not in raw_json, f"--json output holds a raw {raw!r}"
    entries = json.loads(raw_json)
    assert any(e["actor"] == EVIL for e in entries), "the JSON value is the name as sent (escaped only in text)"
    log = postern.log.read_text(errors="replace")
    for raw in RAW:
        assert raw not in log, f"server log holds a raw {raw!r}"


def test_key_names_with_control_characters_are_refused(postern):
    status, body = api(postern, postern.admin_key, "POST", "/v3/api_keys", {"name": "ok\x1b[2Jname", "scopes": ["mail.send"]})
    assert status == 400 and body["errors"][0]["field"] == "name", body
    status, body = api(postern, postern.admin_key, "POST", "/v3/api_keys", {"name": "x" * 101})
    assert status == 400
    status, _ = api(postern, postern.admin_key, "POST", "/v3/api_keys", {"name": "plain ünïcödé"})
    assert status == 201
    listing = postern.cli("key", "list").stdout
    assert "plain ünïcödé" in listing
