"""TOTP second factor (RFC 6238), enrolled and verified through the API and
the command line, with codes from pyotp (a client nobody here wrote)."""

import json
import time
import urllib.request

import pyotp


def api(postern, method, path, key, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{postern.ports['http']}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_totp_over_the_api(postern):
    status, e = api(postern, "POST", "/v3/user/totp", postern.admin_key)
    assert status == 201 and e["active"] is False
    assert e["uri"].startswith("otpauth://totp/Postern:admin?secret=")
    assert len(e["recovery_codes"]) == 10
    otp = pyotp.TOTP(e["secret"])
    code = otp.now()
    status, r = api(postern, "POST", "/v3/user/totp/verify", postern.admin_key, {"code": code})
    assert status == 200 and r == {"valid": True, "active": True}
    # The same code twice is a replay.
    status, r = api(postern, "POST", "/v3/user/totp/verify", postern.admin_key, {"code": code})
    assert status == 400 and r["errors"][0]["field"] == "code"
    status, _ = api(postern, "POST", "/v3/user/totp/verify", postern.admin_key, {"code": e["recovery_codes"][0]})
    assert status == 200
    status, _ = api(postern, "POST", "/v3/user/totp/verify", postern.admin_key, {"code": e["recovery_codes"][0]})
    assert status == 400, "recovery codes work once"
    # Only a full-access key of the account may manage its second factor.
    limited = json.loads(postern.cli("key", "create", "--scopes", "mail.send", "--json").stdout)
    status, r = api(postern, "DELETE", "/v3/user/totp", limited["key"])
    assert status == 403
    status, _ = api(postern, "DELETE", "/v3/user/totp", postern.admin_key)
    assert status == 204
    time.sleep(0.3)
    kinds = [x["kind"] for x in json.loads(postern.cli("audit", "--kind", "totp.", "--json").stdout)]
    assert kinds == ["totp.enroll", "totp.confirm", "totp.failure", "totp.recovery_code", "totp.failure", "totp.disable"], kinds


def test_totp_on_the_command_line(postern):
    postern.cli("account", "create", "operator")
    e = json.loads(postern.cli("totp", "enroll", "operator", "--json").stdout)
    otp = pyotp.TOTP(e["secret"])
    now = time.time()
    valid = {otp.at(now + d) for d in (-60, -30, 0, 30, 60)}
    wrong = next(f"{n:06d}" for n in range(1000000) if f"{n:06d}" not in valid)
    bad = postern.cli("totp", "verify", "operator", wrong, check=False)
    assert bad.returncode != 0 and "rejected" in bad.stderr
    ok = postern.cli("totp", "verify", "operator", pyotp.TOTP(e["secret"]).now())
    assert "now active" in ok.stdout
    postern.cli("totp", "disable", "operator")
    out = postern.cli("totp", "verify", "operator", "123456", check=False)
    assert out.returncode != 0 and "no second factor" in out.stderr
