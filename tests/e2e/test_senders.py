"""Anti-spoofing as users meet it, with smtplib: an account sends only as
senders in domains verified for it (a subuser may use its parent's), the
envelope and the header From must both pass, a lookalike (IDN homograph)
domain is refused, alignment is strict by default and can be relaxed per
account; refusals are 550 5.7.1, recorded as `dropped` with the reason and
in the audit log."""

import json


from conftest import send_as


def key_for(p, account):
    return json.loads(p.cli("key", "create", "--account", account, "--json").stdout)["key"]


def verified_domain(p, domain, account):
    p.cli("domain", "add", domain, "--account", account)
    p.cli("domain", "verify", domain, "--operator")


def test_only_verified_senders(strict, sink):
    p = strict
    admin = p.admin_key
    # Nothing verified yet: refused.
    code, text = send_as(p, admin, "sender@example.org", "sender@example.org")
    assert code == 550 and "5.7.1" in text and "example.org" in text

    verified_domain(p, "example.org", "admin")
    assert send_as(p, admin, "sender@example.org", "Sender <sender@example.org>")[0] == 250
    # The return-path subdomain is the same sender.
    assert send_as(p, admin, "bounce@pst-bounces.example.org", "sender@example.org")[0] == 250

    # Unverified envelope, or an unverified header From: refused.
    code, text = send_as(p, admin, "x@evil.example", "sender@example.org")
    assert code == 550 and "envelope sender domain evil.example" in text
    code, text = send_as(p, admin, "sender@example.org", "CEO <ceo@evil.example>")
    assert code == 550 and "From header domain evil.example" in text
    # A lookalike: "exаmple.org" with a Cyrillic "а".
    code, text = send_as(p, admin, "sender@example.org", "ceo@ex\u0430mple.org")
    assert code == 550 and "From header domain" in text

    # Subusers use their parent's domains, never another account's.
    p.cli("account", "create", "acme")
    p.cli("subuser", "create", "acme-news", "--account", "acme")
    verified_domain(p, "acme.example", "acme")
    news = key_for(p, "acme-news")
    assert send_as(p, news, "news@acme.example", "news@acme.example")[0] == 250
    code, text = send_as(p, news, "sender@example.org", "sender@example.org")
    assert code == 550 and "not verified for this account" in text

    # Strict alignment by default; relaxed on request.
    verified_domain(p, "example.com", "admin")
    code, text = send_as(p, admin, "a@example.com", "b@example.org")
    assert code == 550 and "alignment is strict" in text
    p.cli("account", "sender-alignment", "admin", "relaxed")
    assert send_as(p, admin, "a@example.com", "b@example.org")[0] == 250

    # What was refused is in the send log and the audit log.
    events = json.loads(p.cli("events", "--kind", "dropped", "--json").stdout)
    assert len(events) == 6, events
    assert all("not verified" in e["detail"] or "differ" in e["detail"] for e in events)
    audit = json.loads(p.cli("audit", "--kind", "sender.refused", "--json").stdout)
    assert len(audit) == 6
    # Accepted ones went out (signed, since their domains are verified).
    delivered = sink.wait_for(4)
    assert all(b"DKIM-Signature:" in m["data"] for m in delivered)
