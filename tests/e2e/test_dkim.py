"""DKIM signing as a new user meets it: `postern domain add` prints the
records, the operator marks the domain verified (no DNS check yet), mail
sent with smtplib arrives DKIM-signed twice (RSA-2048 and Ed25519), and
dkimpy verifies both signatures with the keys served by a DNS server on
loopback; a message changed after signing fails."""

import json
import smtplib
import ssl

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest
from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

from conftest import free_port


class Zone(BaseResolver):
    """Answers TXT queries from the records Postern printed."""

    def __init__(self, records):
        self.txt = {}
        for r in records:
            if r["type"] == "TXT":
                self.txt.setdefault(r["name"].rstrip(".").lower() + ".", []).append(r["value"])

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        if request.q.qtype == QTYPE.TXT:
            for value in self.txt.get(qname, []):
                chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        return reply


@pytest.fixture
def published(postern):
    out = json.loads(postern.cli("domain", "add", "example.org", "--account", "admin", "--json").stdout)
    port = free_port()
    server = DNSServer(Zone(out["records"]), port=port, address="127.0.0.1")
    server.start_thread()
    yield out, port
    server.stop()


def txt_from_loopback(port):
    def dnsfunc(name, timeout=5):
        q = dns.message.make_query(name.decode() if isinstance(name, bytes) else name, dns.rdatatype.TXT)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
        for rrset in r.answer:
            for rd in rrset:
                return b"".join(rd.strings)
        return None
    return dnsfunc


def passes(message, idx, dnsfunc):
    """dkimpy's verdict for one signature; it raises on some failures
    (a body hash mismatch) and returns False on others."""
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


def send(postern, body):
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        s.login("apikey", postern.admin_key)
        s.sendmail("sender@example.org", ["rcpt@example.net"], body)


def test_records_then_signed_mail_verifies_with_dkimpy(postern, sink, published):
    out, port = published
    names = {(r["name"], r["type"]) for r in out["records"]}
    assert ("pst1-rsa._domainkey.example.org", "TXT") in names
    assert ("pst1-ed._domainkey.example.org", "TXT") in names
    assert ("_dmarc.example.org", "TXT") in names
    assert ("pst-bounces.example.org", "MX") in names
    assert "pst1-rsa._domainkey.example.org.\t3600\tIN\tTXT\t\"v=DKIM1; k=rsa; p=" in out["zone"]
    assert out["valid"] is False

    # Not verified yet: sent unsigned.
    send(postern, b"From: Sender <sender@example.org>\r\nTo: rcpt@example.net\r\nSubject: before\r\n\r\nunsigned\r\n")
    sink.wait_for(1)
    assert b"DKIM-Signature" not in sink.messages[0]["data"]

    refused = postern.cli("domain", "verify", "example.org", check=False)
    assert refused.returncode != 0 and "--operator" in refused.stderr
    postern.cli("domain", "verify", "example.org", "--operator")
    listed = json.loads(postern.cli("domain", "list", "--json").stdout)
    assert listed[0]["valid"] is True and listed[0]["verified_by"].startswith("operator:")
    audit = json.loads(postern.cli("audit", "--kind", "domain.", "--json").stdout)
    assert {e["kind"] for e in audit} == {"domain.add", "domain.verify.operator"}

    body = (b"From: Sender <sender@example.org>\r\nTo: rcpt@example.net\r\nSubject: signed\r\n"
            b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nHello, DKIM.\r\n")
    send(postern, body)
    msg = sink.wait_for(2)[1]["data"]
    assert msg.count(b"DKIM-Signature:") == 2
    dnsfunc = txt_from_loopback(port)
    assert passes(msg, 0, dnsfunc), "first signature (Ed25519)"
    assert passes(msg, 1, dnsfunc), "second signature (RSA)"
    algorithms = sorted(h for h in (b"ed25519-sha256", b"rsa-sha256") if b"a=" + h in msg)
    assert algorithms == [b"ed25519-sha256", b"rsa-sha256"]

    # Changed after signing: both fail.
    tampered = msg.replace(b"Hello, DKIM.", b"Hello, DKIN.")
    assert not passes(tampered, 0, dnsfunc)
    assert not passes(tampered, 1, dnsfunc)
    resubjected = msg.replace(b"Subject: signed", b"Subject: s1gned")
    assert not passes(resubjected, 0, dnsfunc)
    assert not passes(resubjected, 1, dnsfunc)

    # Another domain in From: not this account's, sent unsigned.
    send(postern, b"From: x@other.example\r\nTo: rcpt@example.net\r\nSubject: other\r\n\r\nx\r\n")
    assert b"DKIM-Signature" not in sink.wait_for(3)[2]["data"]
