"""IP pools as an operator sets them up: pools in the configuration, an
account bound with `postern account ip-pool`, and the receiving server
(aiosmtpd) sees the pool's source address and EHLO name."""

import json
import smtplib
import ssl
import tempfile

import pytest

from conftest import Postern

POOLS = """
[[ip_pool]]
name = "shared"
[[ip_pool.address]]
ip = "127.0.0.3"
ehlo_name = "three.postern.test"

[[ip_pool]]
name = "dedicated"
[[ip_pool.address]]
ip = "127.0.0.2"
ehlo_name = "two.postern.test"
"""


@pytest.fixture
def pooled(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=POOLS,
                    queue_config='retry_initial = "1s"\nretry_max = "2s"\ndefault_ip_pool = "shared"').start()
        p.read_admin_key()
        yield p
        p.stop()


def send(p, key, rcpt):
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.login("apikey", key)
        s.sendmail("sender@example.org", [rcpt], b"Subject: pools\r\n\r\nbody\r\n")


def test_accounts_leave_from_their_pool(pooled, sink):
    p = pooled
    p.cli("account", "create", "acme")
    out = p.cli("account", "ip-pool", "acme", "dedicated").stdout
    assert "dedicated" in out
    bad = p.cli("account", "ip-pool", "acme", "nope", check=False)
    assert bad.returncode != 0 and "no [[ip_pool]] named" in bad.stderr
    acme = json.loads(p.cli("key", "create", "--account", "acme", "--json").stdout)["key"]

    send(p, acme, "to-acme@example.net")
    send(p, p.admin_key, "to-admin@example.net")
    msgs = sink.wait_for(2)
    by_rcpt = {m["rcpt_tos"][0]: m for m in msgs}
    assert (by_rcpt["to-acme@example.net"]["peer"], by_rcpt["to-acme@example.net"]["helo"]) == ("127.0.0.2", "two.postern.test")
    assert (by_rcpt["to-admin@example.net"]["peer"], by_rcpt["to-admin@example.net"]["helo"]) == ("127.0.0.3", "three.postern.test")
    accounts = {a["name"]: a for a in json.loads(p.cli("account", "list", "--json").stdout)}
    assert accounts["acme"]["ip_pool"] == "dedicated"
    audit = json.loads(p.cli("audit", "--kind", "account.ip_pool", "--json").stdout)
    assert len(audit) == 1
