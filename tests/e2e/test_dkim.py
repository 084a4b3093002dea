"""DKIM signing as a new user meets it: `postern domain add` prints the
records, the operator marks the domain verified (no DNS check yet), mail
sent with smtplib arrives DKIM-signed twice (RSA-2048 and Ed25519), and
dkimpy verifies both signatures with the keys served by a DNS server on
loopback; a message changed after signing fails."""

import json
import smtplib
import ssl

import dkim
import pytest
from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

from conftest import free_port, txt_from_loopback, wait_for_clock


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

    # (DNS verification is covered below, against a loopback DNS server;
    # this instance has none configured and must not query the outside.)
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


class MutableZone(BaseResolver):
    """TXT and MX records the test publishes as it goes."""

    def __init__(self):
        self.records = []

    def publish(self, record):
        self.records.append(record)

    def resolve(self, request, handler):
        from dnslib import MX
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        for r in self.records:
            if r["name"].lower() != qname:
                continue
            if request.q.qtype == QTYPE.TXT and r["type"] == "TXT":
                v = r["value"]
                reply.add_answer(RR(qname + ".", QTYPE.TXT, rdata=TXT([v[i:i + 255] for i in range(0, len(v), 255)]), ttl=60))
            if request.q.qtype == QTYPE.MX and r["type"] == "MX":
                pref, host = r["value"].split()
                reply.add_answer(RR(qname + ".", QTYPE.MX, rdata=MX(host, int(pref)), ttl=60))
        return reply


def test_dns_verification_reports_each_record(sink):
    import tempfile
    from conftest import Postern

    zone = MutableZone()
    port = free_port()
    server = DNSServer(zone, port=port, address="127.0.0.1")
    server.start_thread()
    with tempfile.TemporaryDirectory() as d:
        pool = '[[ip_pool]]\nname = "p"\n[[ip_pool.address]]\nip = "127.0.0.2"\n'
        p = Postern(d, sink.port, extra_config=f'[dns]\nnameservers = ["127.0.0.1:{port}"]\n' + pool).start()
        try:
            p.read_admin_key()
            out = json.loads(p.cli("domain", "add", "example.com", "--account", "admin", "--json").stdout)
            required = [r for r in out["records"] if r["required"]]
            # Nothing published: every required record is missing.
            r = p.cli("domain", "verify", "example.com", "--json", check=False)
            assert r.returncode == 1
            report = json.loads(r.stdout)
            assert report["valid"] is False
            assert {x["status"] for x in report["records"] if x["required"]} == {"missing"}

            # Everything but the Ed25519 key, and a wrong RSA key.
            for rec in required:
                if "pst1-ed" in rec["name"]:
                    continue
                if "pst1-rsa" in rec["name"]:
                    zone.publish({**rec, "value": "v=DKIM1; k=rsa; p=AAAA"})
                    continue
                zone.publish(rec)
            report = json.loads(p.cli("domain", "verify", "example.com", "--json", check=False).stdout)
            status = {x["name"]: (x["status"], x["reason"]) for x in report["records"] if x["type"] == "TXT" and "_domainkey" in x["name"]}
            assert status["pst1-ed._domainkey.example.com"] == ("missing", None)
            assert status["pst1-rsa._domainkey.example.com"][0] == "wrong"
            assert "different key" in status["pst1-rsa._domainkey.example.com"][1]
            assert report["valid"] is False

            # Published as printed: verified, and audited as a DNS check.
            zone.records = list(required)
            r = p.cli("domain", "verify", "example.com")
            assert "example.com: verified" in r.stdout
            listed = json.loads(p.cli("domain", "list", "--json").stdout)
            assert listed[0]["verified_by"] == "dns"
            # Its return-path MX and SPF were found: VERP return paths are
            # used; once they disappear, the next check turns them off.
            shown = lambda: json.loads(p.cli("domain", "show", "example.com", "--json").stdout)["return_path_used"]
            assert shown() == "dns"
            zone.records = [r for r in required if not r["name"].startswith("pst-bounces.")]
            p.cli("domain", "verify", "example.com")
            assert shown() == "off"
            zone.records = list(required)
            p.cli("domain", "verify", "example.com")
            assert shown() == "dns"

            # The suggested SPF (return path) and DMARC records, as pyspf and
            # a DMARC reading see them through the same DNS server.
            import spf
            import dns.resolver

            res = dns.resolver.Resolver(configure=False)
            res.nameservers = ["127.0.0.1"]
            res.port = port

            def lookup(name, qtype, tcpfallback=True, timeout=30):
                try:
                    answer = res.resolve(name, qtype)
                except Exception:
                    return []
                if qtype.upper() == "TXT":
                    return [((name, "TXT"), [b"".join(rd.strings)]) for rd in answer]
                return []

            spf.DNSLookup = lookup
            rp = out["return_path"]
            # The pool's address may send for the return path; no other may.
            assert spf.check2(i="127.0.0.2", s=f"bounce@{rp}", h="postern.test")[0] == "pass"
            assert spf.check2(i="127.0.0.9", s=f"bounce@{rp}", h="postern.test")[0] == "fail"
            # The domain's own suggested record (optional, so published only
            # now) lists the pool's address and ends in ~all: pass for the
            # pool, softfail (RFC 7208 §8.5) for any other address. Before
            # it is published the result is "none" (RFC 7208 §8.1): the
            # checks below can tell the record's effect from its absence.
            assert spf.check2(i="127.0.0.9", s="x@example.com", h="postern.test")[0] == "none"
            own_spf = [r for r in out["records"] if r["name"] == "example.com" and r["value"].startswith("v=spf1")]
            assert len(own_spf) == 1 and own_spf[0]["value"].endswith(" ~all"), own_spf
            zone.publish(own_spf[0])
            assert spf.check2(i="127.0.0.2", s="x@example.com", h="postern.test")[0] == "pass"
            assert spf.check2(i="127.0.0.9", s="x@example.com", h="postern.test")[0] == "softfail"
            dmarc = [b"".join(rd.strings).decode() for rd in res.resolve("_dmarc.example.com", "TXT")]
            assert dmarc[0].startswith("v=DMARC1;") and "p=none" in dmarc[0]

            # checkdmarc, through the same DNS server, finds both valid.
            import checkdmarc.dmarc
            import checkdmarc.spf

            spf_check = checkdmarc.spf.check_spf(rp, resolver=res)
            assert spf_check["valid"] is True, spf_check
            assert spf_check["record"] == "v=spf1 ip4:127.0.0.2 -all"
            dmarc_check = checkdmarc.dmarc.check_dmarc("example.com", resolver=res)
            assert dmarc_check["valid"] is True, dmarc_check
            assert dmarc_check["tags"]["p"]["value"] == "none"
            assert dmarc_check["tags"]["rua"]["value"][0]["address"] == "dmarc@example.com"
        finally:
            p.stop()
            server.stop()


def test_domain_authentication_api_with_the_sendgrid_library(sink):
    import tempfile
    from conftest import Postern
    from python_http_client.exceptions import NotFoundError
    from sendgrid import SendGridAPIClient

    zone = MutableZone()
    port = free_port()
    server = DNSServer(zone, port=port, address="127.0.0.1")
    server.start_thread()
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=f'[dns]\nnameservers = ["127.0.0.1:{port}"]\n').start()
        try:
            p.read_admin_key()
            sg = SendGridAPIClient(api_key=p.admin_key, host=f"http://127.0.0.1:{p.ports['http']}")
            r = sg.client.whitelabel.domains.post(request_body={"domain": "Example.NET", "subdomain": "bounces"})
            assert r.status_code == 201
            created = json.loads(r.body)
            dom_id = created["id"]
            assert created["domain"] == "example.net" and created["valid"] is False
            dns_records = created["dns"]
            assert dns_records["dkim1"]["type"] == "txt" and dns_records["dkim1"]["host"] == "pst1-rsa._domainkey.example.net"
            assert dns_records["dkim2"]["data"].startswith("v=DKIM1; k=ed25519; p=")
            assert dns_records["mail_server"]["host"] == "bounces.example.net"
            assert dns_records["subdomain_spf"]["host"] == "bounces.example.net"
            assert dns_records["dmarc"]["host"] == "_dmarc.example.net"

            # Nothing published: validation says what is missing.
            v = json.loads(sg.client.whitelabel.domains._(dom_id).validate.post().body)
            assert v["valid"] is False
            assert v["validation_results"]["dkim1"]["valid"] is False
            assert "no TXT record" in v["validation_results"]["dkim1"]["reason"]

            for rec in dns_records.values():
                if rec["required"]:
                    zone.publish({"name": rec["host"], "type": rec["type"].upper(), "value": rec["data"]})
            v = json.loads(sg.client.whitelabel.domains._(dom_id).validate.post().body)
            assert v["valid"] is True, v
            assert all(x["valid"] for x in v["validation_results"].values() if x["required"])
            listed = json.loads(sg.client.whitelabel.domains.get().body)
            assert [x["domain"] for x in listed] == ["example.net"] and listed[0]["valid"] is True

            # Another account sees none of it.
            p.cli("account", "create", "other")
            other = json.loads(p.cli("key", "create", "--account", "other", "--json").stdout)["key"]
            sg_other = SendGridAPIClient(api_key=other, host=f"http://127.0.0.1:{p.ports['http']}")
            assert json.loads(sg_other.client.whitelabel.domains.get().body) == []
            with pytest.raises(NotFoundError):
                sg_other.client.whitelabel.domains._(dom_id).get()

            assert sg.client.whitelabel.domains._(dom_id).delete().status_code == 204
            assert json.loads(sg.client.whitelabel.domains.get().body) == []
        finally:
            p.stop()
            server.stop()


def selectors_of(msg):
    import re
    return sorted(re.findall(rb"\bs=([a-z0-9-]+);", msg))


def test_key_rotation_with_overlap(sink):
    import tempfile
    import time
    from conftest import Postern

    zone = MutableZone()
    port = free_port()
    server = DNSServer(zone, port=port, address="127.0.0.1")
    server.start_thread()
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=(
            f'[dns]\nnameservers = ["127.0.0.1:{port}"]\n[senders]\ndkim_rotation_overlap = "3s"\n')).start()
        try:
            p.read_admin_key()
            out = json.loads(p.cli("domain", "add", "example.org", "--account", "admin", "--json").stdout)
            for rec in out["records"]:
                if rec["required"]:
                    zone.publish(rec)
            assert "example.org: verified" in p.cli("domain", "verify", "example.org").stdout
            dnsfunc = txt_from_loopback(port)
            body = b"From: s@example.org\r\nTo: rcpt@example.net\r\nSubject: k\r\n\r\nkey %d\r\n"

            send(p, body % 1)
            first = sink.wait_for(1)[0]["data"]
            assert selectors_of(first) == [b"pst1-ed", b"pst1-rsa"]

            # Rotate: new keys printed, not signing until published.
            r = p.cli("domain", "rotate", "example.org")
            assert "pst2-rsa._domainkey.example.org" in r.stdout and "pst2-ed._domainkey.example.org" in r.stdout
            shown = json.loads(p.cli("domain", "show", "example.org", "--json").stdout)
            assert shown["rotation"]["next_selector"] == "pst2"
            new = [x for x in shown["records"] if x["name"].startswith("pst2-")]
            assert len(new) == 2 and all(x["required"] for x in new)
            r = p.cli("domain", "verify", "example.org")
            assert r.returncode == 0 and "pst2 is not published yet; pst1 keeps signing" in r.stdout
            send(p, body % 2)
            assert selectors_of(sink.wait_for(2)[1]["data"]) == [b"pst1-ed", b"pst1-rsa"]

            # Published: the next check promotes it.
            for x in new:
                zone.publish(x)
            r = p.cli("domain", "verify", "example.org")
            assert "pst2 signs from now on; keep pst1 published" in r.stdout
            send(p, body % 3)
            third = sink.wait_for(3)[2]["data"]
            assert selectors_of(third) == [b"pst2-ed", b"pst2-rsa"]
            assert passes(third, 0, dnsfunc) and passes(third, 1, dnsfunc)
            # Mail signed before the rotation still verifies (old keys published).
            assert passes(first, 0, dnsfunc) and passes(first, 1, dnsfunc)
            shown = json.loads(p.cli("domain", "show", "example.org", "--json").stdout)
            assert shown["rotation"]["previous_selector"] == "pst1" and shown["rotation"]["previous_retire_at"]
            old = [x for x in shown["records"] if x["name"].startswith("pst1-")]
            assert len(old) == 2 and not any(x["required"] for x in old)
            audit = json.loads(p.cli("audit", "--kind", "domain.rotate", "--json").stdout)
            assert audit and any("selector=pst2" in e["detail"] for e in audit)

            # After the overlap the old selector is retired: the command
            # line retires what has expired before it reads, so once the
            # clock has passed the retirement time the next look shows it
            # gone. (Waiting here is for the clock, not for the server.)
            wait_for_clock(shown["rotation"]["previous_retire_at"])
            shown = json.loads(p.cli("domain", "show", "example.org", "--json").stdout)
            assert shown["rotation"]["previous_selector"] is None
            assert not [x for x in shown["records"] if x["name"].startswith("pst1-")]
        finally:
            p.stop()
            server.stop()
