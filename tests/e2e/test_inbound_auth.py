"""Inbound authentication on the mx listener: SPF (RFC 7208) on HELO and
MAIL FROM, DKIM (RFC 6376, Ed25519 per RFC 8463), DMARC (RFC 7489) with
alignment, ARC (RFC 8617), the Authentication-Results header (RFC 8601)
and what is done with failures. smtplib is the sending MTA, dkimpy a
third-party signer (and ARC sealer), a dnslib server on loopback the
senders' DNS, and the sink the internal server behind Postern."""

import base64
import email
import json
import re
import smtplib
import socket
import tempfile
import time
from contextlib import contextmanager

import dkim
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from conftest import DnsZone, Postern, metric, txt_from_loopback, wait_until

HELO = "mta.sender.test"
RCPT = "alice@relay.test"


@pytest.fixture
def zone():
    z = DnsZone()
    # The sending MTA's HELO name: SPF passes for 127.0.0.1.
    z.txt(HELO, "v=spf1 ip4:127.0.0.1 -all")
    yield z
    z.stop()


@contextmanager
def server(sink, dns_port, inbound=""):
    """A Postern checking mx mail against the DNS server on `dns_port`,
    with more [inbound_auth] keys in `inbound`."""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(
            d, sink.port,
            inbound_auth=f"enabled = true\n{inbound}",
            extra_config=f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\n',
        ).start()
        p.read_admin_key()
        try:
            yield p
        finally:
            p.stop()


def rsa_key():
    """(PEM private key for dkimpy, the DKIM TXT record)."""
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())
    pub = k.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()


def ed25519_key():
    """(dkimpy's Ed25519 private key: the base64 seed, the TXT record),
    RFC 8463 §4."""
    k = ed25519.Ed25519PrivateKey.generate()
    seed = k.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    pub = k.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return base64.b64encode(seed), "v=DKIM1; k=ed25519; p=" + base64.b64encode(pub).decode()


def message(header_from, subject="hello", body="Hello from outside.\r\n", extra=""):
    return (f"From: {header_from}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@sender.test>\r\n"
            f"{extra}\r\n{body}").encode()


def signed(msg, domain, selector, key, algorithm=b"rsa-sha256"):
    """`msg` with a DKIM-Signature by dkimpy in front."""
    return dkim.sign(msg, selector.encode(), domain.encode(), key, signature_algorithm=algorithm,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + msg


def send(p, mail_from, data, helo=HELO, rcpt=RCPT):
    """Sends over the mx listener: (code, text) of the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], local_hostname=helo, timeout=60) as s:
        try:
            s.sendmail(mail_from, [rcpt], data)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


def unfold(value):
    return re.sub(r"\r?\n[ \t]+", " ", value)


def strip_comments(value):
    """RFC 5322 comments removed (nested), quoted strings kept."""
    out, depth, quoted, i = [], 0, False, 0
    while i < len(value):
        c = value[i]
        if c == "\\" and (quoted or depth):
            if not depth:
                out.append(value[i:i + 2])
            i += 2
            continue
        if quoted:
            quoted = c != '"'
            out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            quoted = c == '"'
            out.append(c)
        i += 1
    return "".join(out)


def split_results(value):
    """An Authentication-Results value (RFC 8601 §2.2) as (authserv-id,
    [{"method", "result", "reason", props...}])."""
    parts, cur, quoted = [], [], False
    for c in strip_comments(unfold(value)):
        if c == '"':
            quoted = not quoted
        if c == ";" and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    authserv = parts[0].split()[0] if parts[0].split() else ""
    resinfos = []
    for part in parts[1:]:
        pairs = re.findall(r'([\w.\-/]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]+)', part)
        if not pairs:
            continue
        (method, result), rest = pairs[0], pairs[1:]
        info = {"method": method.lower(), "result": result.lower()}
        for k, v in rest:
            info[k.lower()] = v.strip('"')
        resinfos.append(info)
    return authserv, resinfos


def headers_of(data):
    return email.message_from_bytes(data)


def ours(data):
    """Postern's one Authentication-Results field of a delivered message,
    parsed: {method: [resinfo, ...]}."""
    mine = [v for v in headers_of(data).get_all("Authentication-Results", [])
            if split_results(v)[0].lower() == "postern.test"]
    assert len(mine) == 1, mine
    by_method = {}
    for info in split_results(mine[0])[1]:
        by_method.setdefault(info["method"], []).append(info)
    return by_method


def delivered(sink, count):
    return sink.wait_for(count)[count - 1]["data"]


def test_spf_pass_fail_softfail_and_permerror(sink, zone):
    zone.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all")
    # RFC 7208 §6: "redirect" at most once, else the record is a permerror.
    zone.txt("perm.test", "v=spf1 ip4:127.0.0.1 redirect=a.test redirect=b.test")
    expected = {"pass.test": "pass", "fail.test": "fail", "soft.test": "softfail", "perm.test": "permerror"}
    with server(sink, zone.port) as p:
        for n, (domain, result) in enumerate(expected.items(), 1):
            assert send(p, f"bounce@{domain}", message(f"news@{domain}"))[0] == 250
            data = delivered(sink, n)
            spf = ours(data)["spf"]
            by_identity = {("helo" if "smtp.helo" in s else "mailfrom"): s for s in spf}
            assert by_identity["mailfrom"]["result"] == result, (domain, spf)
            assert by_identity["mailfrom"]["smtp.mailfrom"] == f"bounce@{domain}"
            assert by_identity["helo"]["result"] == "pass" and by_identity["helo"]["smtp.helo"] == HELO
            # Only a hard fail is acted on: spf_fail = "tag" (the default).
            verdict = headers_of(data).get_all("X-Postern-Verdict", [])
            if result == "fail":
                assert len(verdict) == 1 and unfold(verdict[0]).startswith("tag; SPF failed for fail.test"), verdict
            else:
                assert verdict == [], (domain, verdict)
        assert metric(p, "postern_inbound_auth_total", check="spf_mailfrom", result="fail") == 1
        assert metric(p, "postern_inbound_auth_total", check="spf_mailfrom", result="permerror") == 1
        assert metric(p, "postern_inbound_auth_total", check="spf_helo", result="pass") == 4


def test_dkim_pass_broken_body_and_missing_key(sink, zone):
    rsa_pem, rsa_txt = rsa_key()
    ed_seed, ed_txt = ed25519_key()
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("rsa._domainkey.sender.test", rsa_txt)
    zone.txt("ed._domainkey.sender.test", ed_txt)
    cases = [
        ("ed25519", signed(message("a@sender.test"), "sender.test", "ed", ed_seed, b"ed25519-sha256"), "pass"),
        ("rsa", signed(message("a@sender.test"), "sender.test", "rsa", rsa_pem), "pass"),
        # Changed in transit after signing: the body hash no longer matches.
        ("broken body", signed(message("a@sender.test"), "sender.test", "rsa", rsa_pem).replace(
            b"Hello from outside.", b"Hello from INSIDE!!"), "fail"),
        # Signed with a selector that has no key in DNS (RFC 6376 §6.1.2).
        ("missing key", signed(message("a@sender.test"), "sender.test", "gone", rsa_pem), "permerror"),
    ]
    with server(sink, zone.port) as p:
        for n, (what, data, result) in enumerate(cases, 1):
            assert send(p, "bounce@sender.test", data)[0] == 250, what
            got = ours(delivered(sink, n))["dkim"]
            assert len(got) == 1 and got[0]["result"] == result, (what, got)
            assert got[0].get("header.d") == "sender.test" or got[0].get("header.i", "").endswith("sender.test"), got
        for result, count in (("pass", 2), ("fail", 1), ("permerror", 1)):
            assert metric(p, "postern_inbound_auth_total", check="dkim", result=result) == count, result


def test_dmarc_reject_and_quarantine_with_and_without_alignment(sink, zone):
    rsa_pem, rsa_txt = rsa_key()
    zone.txt("_dmarc.bank.test", "v=DMARC1; p=reject")
    zone.txt("bank.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("k._domainkey.bank.test", rsa_txt)
    zone.txt("_dmarc.shop.test", "v=DMARC1; p=quarantine")
    zone.txt("mail.shop.test", "v=spf1 ip4:127.0.0.1 -all")
    # A bulk sender whose SPF passes for the client but is no From domain here.
    zone.txt("esp.test", "v=spf1 ip4:127.0.0.1 -all")
    with server(sink, zone.port) as p:
        # Aligned through SPF (MAIL FROM in bank.test): pass.
        assert send(p, "bounce@bank.test", message("ceo@bank.test"))[0] == 250
        assert ours(delivered(sink, 1))["dmarc"][0]["result"] == "pass"
        # Aligned through DKIM only (d=bank.test; MAIL FROM at the ESP): pass.
        assert send(p, "bounce@esp.test", signed(message("ceo@bank.test"), "bank.test", "k", rsa_pem))[0] == 250
        r = ours(delivered(sink, 2))
        assert r["dmarc"][0]["result"] == "pass" and r["dkim"][0]["result"] == "pass", r
        # Relaxed alignment (RFC 7489 §3.1.2): MAIL FROM in a subdomain.
        assert send(p, "bounce@mail.shop.test", message("news@shop.test"))[0] == 250
        r = ours(delivered(sink, 3))
        assert r["dmarc"][0]["result"] == "pass", r
        assert headers_of(delivered(sink, 3)).get_all("X-Postern-Verdict", []) == []

        # Not aligned, p=reject: refused at the end of DATA, nothing queued.
        code, text = send(p, "bounce@esp.test", message("ceo@bank.test", subject="wire the money"))
        assert code == 550 and text.startswith("5.7.1"), (code, text)
        assert "bank.test" in text and "p=reject" in text, text
        # Not aligned, p=quarantine: accepted (250) and held in the
        # quarantine with its results and why, not delivered.
        assert send(p, "bounce@esp.test", message("news@shop.test", subject="held for review"))[0] == 250
        [held] = json.loads(p.cli("quarantine", "list", "--json").stdout)
        assert held["from"] == "bounce@esp.test" and [r["email"] for r in held["recipients"]] == [RCPT], held
        assert held["reason"].startswith("DMARC failed for shop.test") and "p=quarantine" in held["reason"], held
        shown = json.loads(p.cli("quarantine", "show", held["id"], "--json").stdout)
        names = [h["name"] for h in shown["preview"]["headers"]]
        assert names[:3] == ["Authentication-Results", "X-Postern-Verdict", "Received"], names
        # Released by the operator, it reaches the internal server with
        # the results and the verdict in front.
        p.cli("quarantine", "release", held["id"])
        data = delivered(sink, 4)
        assert b"Subject: held for review" in data
        r = ours(data)
        assert (r["dmarc"][0]["result"], r["dmarc"][0]["policy.dmarc"], r["dmarc"][0]["header.from"]) == (
            "fail", "quarantine", "shop.test"), r
        verdict = [unfold(v) for v in headers_of(data).get_all("X-Postern-Verdict", [])]
        assert len(verdict) == 1 and verdict[0].startswith("quarantine; DMARC failed for shop.test"), verdict
        assert "p=quarantine" in verdict[0]

        # The refused message never reached the sink (the held one, sent
        # after it, did once released), and is in the send log: processed
        # with the results, then dropped for its recipient with the reason.
        assert not any(b"wire the money" in m["data"] for m in sink.messages)
        events = json.loads(p.cli("events", "--json").stdout)
        dropped = [e for e in events if e["event"] == "dropped"]
        assert len(dropped) == 1 and dropped[0]["recipient"] == RCPT, dropped
        assert "p=reject" in dropped[0]["detail"], dropped
        refused = [e for e in events if e["event"] == "processed" and e["message_id"] == dropped[0]["message_id"]]
        assert len(refused) == 1 and "dmarc=fail(p=reject)" in refused[0]["detail"] and "action=reject" in refused[0]["detail"], refused
        # The held one's quarantined event carries its results too.
        quarantined = [e for e in events if e["event"] == "quarantined"]
        assert len(quarantined) == 1 and "dmarc=fail(p=quarantine)" in quarantined[0]["detail"], events
        assert "action=quarantine" in quarantined[0]["detail"], quarantined
        assert metric(p, "postern_inbound_rejected_total", reason="dmarc_policy") == 1
        assert metric(p, "postern_inbound_auth_total", check="dmarc", result="fail") == 2
        assert metric(p, "postern_inbound_auth_total", check="dmarc", result="pass") == 3
        assert metric(p, "postern_smtp_rejected_total", reason="authentication") == 1


def test_local_policy_can_be_stricter_than_the_senders(sink, zone):
    zone.txt("_dmarc.lax.test", "v=DMARC1; p=none")
    zone.txt("esp.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("spoofed.test", "v=spf1 ip4:192.0.2.1 -all")
    # The relay domain's own rules: DMARC failures refused even under
    # p=none, SPF failures refused.
    rules = '[[inbound_auth.domain]]\ndomain = "relay.test"\ndmarc_fail = "reject"\nspf_fail = "reject"\n'
    with server(sink, zone.port, rules) as p:
        code, text = send(p, "bounce@esp.test", message("boss@lax.test"))
        assert code == 550 and text.startswith("5.7.1") and "local policy" in text and "lax.test" in text, (code, text)
        code, text = send(p, "someone@spoofed.test", message("someone@spoofed.test"))
        assert code == 550 and "SPF failed for spoofed.test" in text, (code, text)
        assert metric(p, "postern_inbound_rejected_total", reason="dmarc_local") == 1
        assert metric(p, "postern_inbound_rejected_total", reason="spf") == 1
    # The same messages under the default rules: p=none is honoured as
    # it is (accepted), an SPF failure is tagged.
    with server(sink, zone.port) as p:
        assert send(p, "bounce@esp.test", message("boss@lax.test"))[0] == 250
        r = ours(delivered(sink, 1))
        assert (r["dmarc"][0]["result"], r["dmarc"][0]["policy.dmarc"]) == ("fail", "none"), r
        assert headers_of(delivered(sink, 1)).get_all("X-Postern-Verdict", []) == []
        assert send(p, "someone@spoofed.test", message("someone@spoofed.test"))[0] == 250
        assert headers_of(delivered(sink, 2)).get_all("X-Postern-Verdict", []) != []


def forwarded(rsa_pem, fwd_pem, forwarder_saw):
    """A message from orig.test (DKIM-signed, p=reject) after a mailing
    list at forwarder.test: the list recorded what it saw
    (`forwarder_saw`, its Authentication-Results), changed the subject
    (breaking orig.test's signature), and sealed it (dkimpy arc_sign)."""
    original = signed(message("ceo@orig.test", subject="minutes"), "orig.test", "k", rsa_pem)
    listed = (f"Authentication-Results: forwarder.test; {forwarder_saw}\r\n".encode()
              + original.replace(b"Subject: minutes", b"Subject: [list] minutes"))
    seal = dkim.arc_sign(listed, b"arc", b"forwarder.test", fwd_pem, b"forwarder.test")
    return b"".join(seal) + listed


def test_arc_across_a_forwarding_hop_with_a_trusted_forwarder(sink, zone):
    rsa_pem, rsa_txt = rsa_key()
    fwd_pem, fwd_txt = rsa_key()
    zone.txt("_dmarc.orig.test", "v=DMARC1; p=reject")
    zone.txt("orig.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("k._domainkey.orig.test", rsa_txt)
    zone.txt("forwarder.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("arc._domainkey.forwarder.test", fwd_txt)
    passed = forwarded(rsa_pem, fwd_pem, "dkim=pass header.d=orig.test; spf=pass smtp.mailfrom=ceo@orig.test; "
                       "dmarc=pass header.from=orig.test; arc=none")
    failed_there = forwarded(rsa_pem, fwd_pem, "dkim=fail header.d=orig.test; spf=fail smtp.mailfrom=ceo@orig.test; "
                             "dmarc=fail header.from=orig.test; arc=none")
    # Not trusted: the forwarded message fails DMARC here (the list broke
    # the signature, its own MAIL FROM is not aligned) and p=reject holds.
    with server(sink, zone.port) as p:
        code, text = send(p, "list-bounces@forwarder.test", passed)
        assert code == 550 and "orig.test" in text, (code, text)
    with server(sink, zone.port, 'trusted_arc_sealers = ["forwarder.test"]') as p:
        assert send(p, "list-bounces@forwarder.test", passed)[0] == 250
        data = delivered(sink, 1)
        r = ours(data)
        assert r["arc"][0]["result"] == "pass", r
        assert r["dkim"][0]["result"] == "fail", r
        dmarc_ = r["dmarc"][0]
        assert dmarc_["result"] == "fail" and dmarc_["policy.dmarc"] == "reject", r
        assert dmarc_["reason"].startswith("policy override: trusted_forwarder") and "forwarder.test" in dmarc_["reason"], r
        assert headers_of(data).get_all("X-Postern-Verdict", []) == []
        # The forwarder's own results are its own: kept as they came.
        assert any(v.startswith(" forwarder.test") or v.startswith("forwarder.test")
                   for v in headers_of(data).get_all("Authentication-Results", []))
        # A trusted forwarder whose sealed results say DMARC failed there
        # vouches for nothing: p=reject holds.
        code, text = send(p, "list-bounces@forwarder.test", failed_there)
        assert code == 550 and "p=reject" in text, (code, text)
        events = json.loads(p.cli("events", "--kind", "processed", "--json").stdout)
        assert sum("override=trusted_forwarder" in e["detail"] for e in events) == 1, events
    # Trusted by its network instead (the client's address; the sealer's
    # domain is not listed): the same.
    with server(sink, zone.port, 'trusted_forwarders = ["127.0.0.0/8"]') as p:
        assert send(p, "list-bounces@forwarder.test", passed)[0] == 250
        dmarc_ = ours(delivered(sink, 2))["dmarc"][0]
        assert dmarc_["reason"].startswith("policy override: trusted_forwarder"), dmarc_
        assert send(p, "list-bounces@forwarder.test", failed_there)[0] == 550
    # A network the client is not in trusts nothing.
    with server(sink, zone.port, 'trusted_forwarders = ["192.0.2.0/24"]') as p:
        assert send(p, "list-bounces@forwarder.test", passed)[0] == 550


def test_a_forged_authentication_results_header_is_removed(sink, zone):
    zone.txt("sender.test", "v=spf1 ip4:192.0.2.1 -all")
    forged = ("Authentication-Results: postern.test;\r\n\tdkim=pass header.d=bank.test;\r\n\tdmarc=pass header.from=bank.test\r\n"
              "Authentication-Results: mx.other.example; spf=pass smtp.mailfrom=x@sender.test\r\n"
              "authentication-results: (looks innocent) POSTERN.TEST; spf=pass\r\n"
              "X-Postern-Verdict: accept\r\n")
    data = forged.encode() + message("a@sender.test", body="the body stays as it was\r\n")
    with server(sink, zone.port) as p:
        assert send(p, "a@sender.test", data)[0] == 250
        got = delivered(sink, 1)
        # Two Authentication-Results fields and the X-Postern-Verdict.
        assert metric(p, "postern_inbound_forged_results_removed_total") == 3
    fields = headers_of(got).get_all("Authentication-Results", [])
    authservs = [split_results(v)[0].lower() for v in fields]
    # Ours (the real results) and the other server's; both forged
    # postern.test fields are gone, whatever their case or comments.
    assert sorted(authservs) == ["mx.other.example", "postern.test"], fields
    r = ours(got)
    assert "dkim" in r and r["dkim"][0]["result"] == "none", r
    assert {s["result"] for s in r["spf"] if "smtp.mailfrom" in s} == {"fail"}, r
    assert not any(s["result"] == "pass" for s in r.get("dmarc", [])), r
    # Our own X-Postern-Verdict (SPF failed: tagged) replaced the forged one.
    assert [unfold(v).split(";")[0] for v in headers_of(got).get_all("X-Postern-Verdict", [])] == ["tag"]
    assert got.endswith(b"\r\n\r\nthe body stays as it was\r\n")


def test_an_accepted_message_arrives_with_the_right_authentication_results(sink, zone):
    rsa_pem, rsa_txt = rsa_key()
    ed_seed, ed_txt = ed25519_key()
    zone.txt("partner.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("_dmarc.partner.test", "v=DMARC1; p=reject; adkim=s; aspf=s")
    zone.txt("ed._domainkey.partner.test", ed_txt)
    zone.txt("rsa._domainkey.partner.test", rsa_txt)
    original = message("invoices@partner.test", body="Invoice 42 attached.\r\n")
    sent = signed(signed(original, "partner.test", "rsa", rsa_pem), "partner.test", "ed", ed_seed, b"ed25519-sha256")
    with server(sink, zone.port) as p:
        assert send(p, "invoices@partner.test", sent)[0] == 250
        got = delivered(sink, 1)
        events = json.loads(p.cli("events", "--kind", "processed", "--json").stdout)
        assert len(events) == 1
        assert "auth: spf=pass helo=pass dkim=pass,pass arc=none dmarc=pass(p=reject) action=accept" in events[0]["detail"], events
    # RFC 8601 §4.1: prepended, above the trace fields.
    assert got.startswith(b"Authentication-Results: postern.test;"), got[:200]
    r = ours(got)
    assert set(r) == {"spf", "dkim", "arc", "dmarc"}, r
    spf = {("helo" if "smtp.helo" in s else "mailfrom"): s for s in r["spf"]}
    assert spf["helo"]["result"] == "pass" and spf["helo"]["smtp.helo"] == HELO
    assert spf["mailfrom"]["result"] == "pass" and spf["mailfrom"]["smtp.mailfrom"] == "invoices@partner.test"
    assert sorted((d["result"], d["header.s"]) for d in r["dkim"]) == [("pass", "ed"), ("pass", "rsa")], r
    assert all(d.get("header.d", d.get("header.i", "")).endswith("partner.test") for d in r["dkim"])
    assert r["arc"] == [{"method": "arc", "result": "none", "smtp.remote-ip": "127.0.0.1"}]
    assert r["dmarc"] == [{"method": "dmarc", "result": "pass", "header.from": "partner.test", "policy.dmarc": "reject"}]
    assert headers_of(got).get_all("X-Postern-Verdict", []) == []
    # Below Postern's fields the message is as the sender sent it.
    assert got.endswith(sent)


def test_a_dns_server_that_never_answers_cannot_stall_the_port(sink, zone):
    # A name server that takes every query and answers none.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        # check_timeout well above what three lookups take: the time
        # limit seen here is the one per lookup.
        # dmarc_temperror = "accept": delivered with the temperrors
        # recorded (the default defers: the next test).
        with server(sink, silent.getsockname()[1], 'dns_timeout = "1s"\ncheck_timeout = "10s"\ndmarc_temperror = "accept"\n') as p:
            with smtplib.SMTP("127.0.0.1", p.ports["mx"], local_hostname=HELO, timeout=60) as s:
                s.ehlo()
                s.mail("a@sender.test")
                s.rcpt(RCPT)
                s.putcmd("data")
                assert s.getreply()[0] == 354
                s.send(message("a@sender.test") + b".\r\n")
                started = time.monotonic()
                # While that message's lookups wait, the listener still
                # greets and serves another client.
                with smtplib.SMTP("127.0.0.1", p.ports["mx"], local_hostname=HELO, timeout=60) as other:
                    assert other.noop()[0] == 250
                    greeted = time.monotonic() - started
                code, _ = s.getreply()
                took = time.monotonic() - started
            assert code == 250
            assert greeted < 1.0, greeted
            # Three lookups (HELO SPF, MAIL FROM SPF, the DMARC record) of
            # one try of at most 1 s each (3 s); a retry each would make 6,
            # hickory's default (5 s, two retries) far more.
            assert took < 5.0, took
            r = ours(delivered(sink, 1))
            assert {s["result"] for s in r["spf"]} == {"temperror"}, r
            assert r["dmarc"][0]["result"] == "temperror", r
    finally:
        silent.close()


def test_a_dmarc_temperror_is_deferred_unless_the_sender_is_excused(sink, zone):
    """RFC 7489 §6.6.2: with the From domain's policy unreadable for now,
    the message is deferred (451) rather than let through unjudged, and
    nothing is queued; a [[inbound_auth.sender]] entry may accept it."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        timeouts = 'dns_timeout = "1s"\ncheck_timeout = "10s"\n'
        with server(sink, silent.getsockname()[1], timeouts) as p:
            code, text = send(p, "a@sender.test", message("a@sender.test"))
            assert code == 451 and text.startswith("4.3.0"), (code, text)
            assert "DMARC could not be evaluated for sender.test" in text, text
            assert metric(p, "postern_inbound_deferred_total") == 1
            events = json.loads(p.cli("events", "--json").stdout)
            assert [e["event"] for e in events] == ["refused"], events
            assert "451 4.3.0" in events[0]["detail"], events
        # Excused by its From domain (a subdomain's mail, the entry names
        # the parent): accepted with the temperror recorded.
        excused = timeouts + '[[inbound_auth.sender]]\ndomain = "sender.test"\ndmarc_temperror = "accept"\n'
        with server(sink, silent.getsockname()[1], excused) as p:
            assert send(p, "a@mail.sender.test", message("a@mail.sender.test"))[0] == 250
            r = ours(delivered(sink, 1))
            assert r["dmarc"][0]["result"] == "temperror", r
        assert len(sink.messages) == 1
    finally:
        silent.close()


def test_a_sender_entry_holds_a_domain_to_more_than_it_publishes(sink, zone):
    """A much-spoofed domain on p=none: its [[inbound_auth.sender]] entry
    refuses its DMARC failures; another p=none domain's are accepted."""
    zone.txt("_dmarc.lax.test", "v=DMARC1; p=none")
    zone.txt("_dmarc.other.test", "v=DMARC1; p=none")
    zone.txt("esp.test", "v=spf1 ip4:127.0.0.1 -all")
    rules = '[[inbound_auth.sender]]\ndomain = "lax.test"\ndmarc_fail = "reject"\n'
    with server(sink, zone.port, rules) as p:
        code, text = send(p, "bounce@esp.test", message("boss@lax.test"))
        assert code == 550 and "lax.test" in text, (code, text)
        assert send(p, "bounce@esp.test", message("boss@other.test"))[0] == 250
        r = ours(delivered(sink, 1))
        assert (r["dmarc"][0]["result"], r["dmarc"][0]["header.from"]) == ("fail", "other.test"), r


def test_what_is_passed_on_is_arc_sealed_and_the_chain_verifies(sink, zone):
    """RFC 8617: with inbound_auth.arc_seal_domain, every message passed on
    carries Postern's ARC set, made with that verified domain's RSA DKIM
    key (its published record): i=1 on mail that came without a chain,
    i=2 with cv=pass over a forwarder's valid one. dkimpy verifies both
    chains against the published records."""
    rsa_pem, rsa_txt = rsa_key()
    fwd_pem, fwd_txt = rsa_key()
    zone.txt("_dmarc.orig.test", "v=DMARC1; p=reject")
    zone.txt("orig.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("k._domainkey.orig.test", rsa_txt)
    zone.txt("forwarder.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.txt("arc._domainkey.forwarder.test", fwd_txt)
    zone.txt("_dmarc.sender.test", "v=DMARC1; p=reject")
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    passed = forwarded(rsa_pem, fwd_pem, "dkim=pass header.d=orig.test; spf=pass smtp.mailfrom=ceo@orig.test; "
                       "dmarc=pass header.from=orig.test; arc=none")
    rules = 'trusted_arc_sealers = ["forwarder.test"]\narc_seal_domain = "relay.test"\n'
    # A seal domain that is not (yet) a verified domain: no seal (its key
    # may not be published), and the mail flows all the same.
    with server(sink, zone.port, rules) as p:
        assert send(p, "a@sender.test", message("a@sender.test", subject="unsealed"))[0] == 250
        assert b"ARC-Seal" not in delivered(sink, 1)
    with server(sink, zone.port, rules) as p:
        out = json.loads(p.cli("domain", "add", "relay.test", "--account", "admin", "--json").stdout)
        for r in out["records"]:
            if r["type"] == "TXT":
                zone.txt(r["name"].rstrip("."), r["value"])
        p.cli("domain", "verify", "relay.test", "--operator")
        dnsfunc = txt_from_loopback(zone.port)
        assert send(p, "a@sender.test", message("a@sender.test", subject="direct"))[0] == 250
        direct = delivered(sink, 2)
        cv, results, why = dkim.arc_verify(direct, dnsfunc=dnsfunc)
        assert cv == dkim.CV_Pass, (cv, results, why)
        seal = headers_of(direct)["ARC-Seal"]
        assert "d=relay.test" in seal and "s=pst1-rsa" in seal.replace(" ", ""), seal
        aar = headers_of(direct)["ARC-Authentication-Results"]
        assert "postern.test" in aar and "dmarc=pass" in aar, aar

        # Over a forwarder's chain: Postern's set is i=2, cv=pass, and the
        # whole chain verifies.
        assert send(p, "list-bounces@forwarder.test", passed)[0] == 250
        chained = delivered(sink, 3)
        def tags(value):
            return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in unfold(value).split(";")) if k.strip()}
        seals = [tags(v) for v in headers_of(chained).get_all("ARC-Seal", [])]
        ours_seal = [t for t in seals if t.get("d") == "relay.test"]
        assert len(seals) == 2 and len(ours_seal) == 1, seals
        assert (ours_seal[0]["i"], ours_seal[0]["cv"], ours_seal[0]["a"]) == ("2", "pass", "rsa-sha256"), seals
        cv, results, why = dkim.arc_verify(chained, dnsfunc=dnsfunc)
        assert cv == dkim.CV_Pass, (cv, results, why)
        assert metric(p, "postern_arc_sealed_total", result="sealed") >= 2
