"""nodemailer (PLAIN, LOGIN, CRAM-MD5, XOAUTH2) and Python's smtplib
(XOAUTH2, OAUTHBEARER) against the real binary; tokens are RS256 JWTs from a
test issuer made with PyJWT and cryptography."""

import base64
import json
import smtplib
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import BIN, Postern, certificate, free_port

NODE_DIR = Path(__file__).resolve().parent / "node"
ISSUER = "https://idp.postern.test"


@pytest.fixture(scope="module")
def idp():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "test-1", "use": "sig", "alg": "RS256"})
    return key, {"keys": [jwk]}


def token(key, account, **overrides):
    claims = {"iss": ISSUER, "aud": "postern", "sub": account, "exp": int(time.time()) + 600}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "test-1"})


@pytest.fixture
def oauth_postern(sink, idp):
    with tempfile.TemporaryDirectory() as d:
        jwks = Path(d) / "jwks.json"
        jwks.write_text(json.dumps(idp[1]))
        port = free_port()
        extra = f"""
[[listener]]
role = "submission"
address = "127.0.0.1:{port}"
auth_mechanisms = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"]

[[oauth_issuer]]
issuer = "{ISSUER}"
audience = "postern"
jwks_file = "{jwks}"
account_claim = "sub"
"""
        p = Postern(d, sink.port, extra_config=extra)
        p.ports["oauth"] = port
        p.start()
        p.read_admin_key()
        p.cli("account", "create", "acme")
        subprocess.run(
            [str(BIN), "--config", str(p.config_path), "account", "password", "acme"],
            input="violet-anchor-tundra-42\n", text=True, check=True, capture_output=True,
        )
        p.cli("account", "password-auth", "acme", "on")
        subprocess.run(
            [str(BIN), "--config", str(p.config_path), "account", "cram-md5", "acme", "on"],
            input="violet-anchor-tundra-42\n", text=True, check=True, capture_output=True,
        )
        yield p
        p.stop()


def nodemailer(postern, **opts):
    opts.setdefault("port", postern.ports["oauth"])
    opts["ca"] = postern.cert
    return subprocess.run(["node", "send.mjs", json.dumps(opts)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)


def test_nodemailer_every_mechanism(oauth_postern, sink, idp):
    p = oauth_postern
    sent = 0
    for method in ["PLAIN", "LOGIN", "CRAM-MD5"]:
        out = nodemailer(p, user="acme", **{"pass": "violet-anchor-tundra-42"}, method=method, subject=f"via {method}")
        assert out.returncode == 0, f"{method}: {out.stderr}"
        assert "queued as" in out.stdout
        sent += 1
    out = nodemailer(p, user="acme", method="XOAUTH2", accessToken=token(idp[0], "acme"), subject="via XOAUTH2")
    assert out.returncode == 0, out.stderr
    sent += 1
    # An API key over implicit TLS, too.
    out = nodemailer(p, port=p.ports["submissions"], secure=True, user="apikey", **{"pass": p.admin_key}, method="PLAIN", subject="via 465")
    assert out.returncode == 0, out.stderr
    sent += 1
    msgs = sink.wait_for(sent)
    subjects = {m["data"].split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in msgs}
    assert {"via PLAIN", "via LOGIN", "via CRAM-MD5", "via XOAUTH2", "via 465"} <= subjects
    # An expired token is refused at AUTH with 535 5.7.8 (RFC 4954 §6),
    # and nothing more is sent.
    out = nodemailer(p, user="acme", method="XOAUTH2", accessToken=token(idp[0], "acme", exp=int(time.time()) - 3600), subject="expired")
    assert out.returncode == 1 and "queued as" not in out.stdout, out.stdout
    assert out.stderr.strip() == "535 5.7.8 Authentication credentials invalid", out.stderr


def oauth_login(p, mechanism, payload):
    """Runs an OAuth exchange by hand; returns the final reply code and what the server sent."""
    with smtplib.SMTP("127.0.0.1", p.ports["oauth"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.ehlo()
        code, msg = s.docmd("AUTH", f"{mechanism} {base64.b64encode(payload).decode()}")
        if code == 334:
            error = json.loads(base64.b64decode(msg))
            # RFC 7628 §3.2.3: the client answers the error with a dummy line.
            code, msg = s.docmd("AQ==" if mechanism == "OAUTHBEARER" else "")
            return code, error
        return code, msg


def test_xoauth2_and_oauthbearer_with_jwt(oauth_postern, idp):
    p, key = oauth_postern, idp[0]
    good = token(key, "acme")
    assert oauth_login(p, "XOAUTH2", f"user=acme\x01auth=Bearer {good}\x01\x01".encode())[0] == 235
    assert oauth_login(p, "OAUTHBEARER", f"n,a=acme,\x01auth=Bearer {good}\x01\x01".encode())[0] == 235
    for bad, why in [
        (token(key, "acme", exp=int(time.time()) - 3600), "expired"),
        (token(key, "acme", aud="someone-else"), "audience"),
        (token(key, "acme", iss="https://evil.test"), "issuer"),
        (token(key, "nobody"), "unknown account"),
        (good[:-4] + "AAAA", "signature"),
    ]:
        code, error = oauth_login(p, "OAUTHBEARER", f"n,a=,\x01auth=Bearer {bad}\x01\x01".encode())
        assert code == 535, why
        assert error["status"] == "invalid_token", error  # RFC 7628 §3.2.2
    code, error = oauth_login(p, "XOAUTH2", f"user=acme\x01auth=Bearer {token(key, 'acme', aud='x')}\x01\x01".encode())
    assert code == 535 and error["status"] == "401"
    # The token names the account: claiming another user is refused.
    assert oauth_login(p, "XOAUTH2", f"user=admin\x01auth=Bearer {good}\x01\x01".encode())[0] == 535


def test_jwks_from_an_https_url_with_key_rotation(sink):
    import http.server
    import threading

    keys = {"current": rsa.generate_private_key(public_exponent=65537, key_size=2048)}

    def jwks():
        jwk = json.loads(RSAAlgorithm.to_jwk(keys["current"].public_key()))
        jwk.update({"kid": "test-1", "use": "sig"})
        return json.dumps({"keys": [jwk]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = jwks()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with tempfile.TemporaryDirectory() as d:
        made = certificate(d, "jwks", ips=["127.0.0.1"])
        cert, key = made["cert"], made["key"]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = free_port()
        extra = f"""
[[listener]]
role = "submission"
address = "127.0.0.1:{port}"
auth_mechanisms = ["XOAUTH2", "OAUTHBEARER"]

[[oauth_issuer]]
issuer = "{ISSUER}"
audience = "postern"
jwks_url = "https://127.0.0.1:{server.server_address[1]}/jwks.json"
jwks_ca_file = "{cert}"
jwks_refresh = "1s"
"""
        p = Postern(d, sink.port, extra_config=extra)
        p.ports["oauth"] = port
        p.start()
        try:
            p.read_admin_key()
            p.cli("account", "create", "acme")
            login = lambda k: oauth_login(p, "XOAUTH2", f"user=acme\x01auth=Bearer {token(k, 'acme')}\x01\x01".encode())[0]
            old = keys["current"]
            assert login(old) == 235
            # The issuer rotates its key; Postern picks it up on its next refresh.
            keys["current"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            deadline = time.time() + 15
            while time.time() < deadline and login(keys["current"]) != 235:
                time.sleep(0.5)
            assert login(keys["current"]) == 235
            assert login(old) == 535
        finally:
            p.stop()
            server.shutdown()
