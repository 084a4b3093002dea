"""MTA-STS policy serving (RFC 8461 §3.2): the HTTP listener answers
`GET /.well-known/mta-sts.txt` for `mta-sts.<domain>` hosts with the
policy of `[[mta_sts]]`, and the `_mta-sts` TXT record `postern domain`
prints carries an id that follows the policy's content (RFC 8461 §3.1).
curl is the HTTP client (it sends the Host a sender would, through
--resolve), checkdmarc the independent parser of policy and record."""

import hashlib
import json
import subprocess
import tempfile

import checkdmarc.mta_sts

from conftest import Postern, metric

POLICIES = """
[[mta_sts]]
domain = "corp.test"
mode = "enforce"
mx = ["mx1.corp.test", "*.mx.corp.test"]
max_age = "1d"

[[mta_sts]]
domain = "testing.test"
mode = "testing"
"""


def fetch(p, host, path="/.well-known/mta-sts.txt"):
    """GET http://HOST:PORT/PATH with curl, HOST resolved to the server:
    (status, content type, body)."""
    port = p.ports["http"]
    out = subprocess.run(
        ["curl", "-sS", "--resolve", f"{host}:{port}:127.0.0.1",
         "-w", "\n%{http_code} %{content_type}", f"http://{host}:{port}{path}"],
        capture_output=True, check=True, timeout=30,
    ).stdout
    body, _, tail = out.rpartition(b"\n")
    code, _, ctype = tail.decode().partition(" ")
    return int(code), ctype, body


def mta_sts_record(p, domain, command="show"):
    args = ["domain", command, domain, "--json"]
    if command == "add":
        args[3:3] = ["--account", "admin"]
    out = json.loads(p.cli(*args).stdout)
    return [r for r in out["records"] if r["name"] == f"_mta-sts.{domain}"]


def test_policies_are_served_per_host_and_the_record_id_follows_them(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=POLICIES).start()
        p.read_admin_key()
        try:
            code, ctype, body = fetch(p, "mta-sts.corp.test")
            assert code == 200, body
            # RFC 8461 §3.2: the policy is served as text/plain.
            assert ctype.split(";")[0] == "text/plain", ctype
            parsed = checkdmarc.mta_sts.parse_mta_sts_policy(body.decode())
            assert parsed["warnings"] == []
            assert parsed["policy"] == {
                "version": "STSv1", "mode": "enforce", "max_age": 86400,
                "mx": ["mx1.corp.test", "*.mx.corp.test"],
            }
            # Host names are case-insensitive, and a policy without mx
            # lists the server's host name.
            code, _, body = fetch(p, "MTA-STS.Testing.Test")
            assert code == 200, body
            assert checkdmarc.mta_sts.parse_mta_sts_policy(body.decode())["policy"] == {
                "version": "STSv1", "mode": "testing", "max_age": 604800,
                "mx": ["postern.test"],
            }
            assert metric(p, "postern_mta_sts_policy_served_total") == 2
            # A domain without a policy, and a host that is not mta-sts.*,
            # get no policy.
            for host in ("mta-sts.unknown.test", "corp.test", "127.0.0.1"):
                code, _, body = fetch(p, host)
                assert code == 404, (host, body)
            # Other paths on a policy host stay the API's.
            code, _, body = fetch(p, "mta-sts.corp.test", "/healthz")
            assert (code, body.split(b"\n")[0]) == (200, b"ok")

            # The TXT record's id is the served policy's: it names this
            # content (RFC 8461 §3.1), and checkdmarc accepts the record.
            [record] = mta_sts_record(p, "corp.test", "add")
            assert record["required"] is False
            tags = checkdmarc.mta_sts.parse_mta_sts_record(record["value"])["tags"]
            served = fetch(p, "mta-sts.corp.test")[2]
            assert tags["id"] == hashlib.sha256(served).hexdigest()[:32]
            first_id = tags["id"]
            # A domain Postern serves no policy for gets no _mta-sts record.
            assert mta_sts_record(p, "plain.test", "add") == []
        finally:
            p.stop()

        # The policy changes (another MX host): the printed id changes,
        # and the restarted server serves the content the new id names.
        p.config_path.write_text(
            p.config_path.read_text().replace(
                '"*.mx.corp.test"]', '"*.mx.corp.test", "mx2.corp.test"]'
            )
        )
        [record] = mta_sts_record(p, "corp.test")
        new_id = checkdmarc.mta_sts.parse_mta_sts_record(record["value"])["tags"]["id"]
        assert new_id != first_id
        p.start()
        try:
            code, _, served = fetch(p, "mta-sts.corp.test")
            assert code == 200
            assert checkdmarc.mta_sts.parse_mta_sts_policy(served.decode())["policy"]["mx"] == [
                "mx1.corp.test", "*.mx.corp.test", "mx2.corp.test",
            ]
            assert hashlib.sha256(served).hexdigest()[:32] == new_id
        finally:
            p.stop()
