"""Return paths (VERP) as a sender meets them: mail from a verified domain
leaves with a per-recipient envelope sender in the domain's bounce
subdomain; a delivery report (RFC 3464) that a receiving server sends back
later to that address is attributed to the message and the recipient: a
`bounce` event with its class, and the address suppressed when it does not
exist. Forged or unknown return paths are refused."""

import json
import smtplib
import ssl
import urllib.request


def report(to, recipient, status, diagnostic):
    """A delivery status notification (RFC 3464) as a receiving MTA sends it."""
    return (
        "From: MAILER-DAEMON@mx.example.net\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--b1--\r\n"
    ).encode()


def test_verp_return_path_and_late_bounces(strict, sink):
    p = strict
    p.cli("domain", "add", "example.org", "--account", "admin")
    p.cli("domain", "verify", "example.org", "--operator")
    body = b"From: news@example.org\r\nTo: a@example.net\r\nSubject: hello\r\n\r\nhi\r\n"

    def submit(rcpts):
        with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
            s.starttls(context=ssl.create_default_context(cafile=p.cert))
            s.login("apikey", p.admin_key)
            s.sendmail("news@example.org", rcpts, body)

    # Verified by the operator, nobody checked that the bounce subdomain
    # has MX and SPF records: the envelope sender is left alone, or
    # bounces would be lost and the envelope domain have no SPF.
    submit(["carol@example.net"])
    first = sink.wait_for(1)
    assert first[0]["mail_from"] == "news@example.org", first[0]["mail_from"]
    assert json.loads(p.cli("domain", "show", "example.org", "--json").stdout)["return_path_used"] == "off"
    # The operator says the records are there: return paths are used.
    p.cli("domain", "return-path", "example.org", "on")
    submit(["alice@example.net", "bob@example.net"])
    got = sink.wait_for(3)[1:]
    by_rcpt = {m["rcpt_tos"][0]: m["mail_from"] for m in got}
    assert all(len(m["rcpt_tos"]) == 1 for m in got), "one transaction per recipient"
    alice_rp, bob_rp = by_rcpt["alice@example.net"], by_rcpt["bob@example.net"]
    for rp in (alice_rp, bob_rp):
        local, domain = rp.rsplit("@", 1)
        assert domain == "pst-bounces.example.org" and local.startswith("b-") and len(local) <= 64
    assert alice_rp != bob_rp

    def to_mx(rcpt, data, mail_from=""):
        with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
            s.ehlo("mx.example.net")
            s.mail(mail_from)
            code, _ = s.rcpt(rcpt)
            if code != 250:
                return code
            code, _ = s.data(data)
            return code

    # Alice does not exist (5.1.1, reported later): bounce event, suppressed.
    assert to_mx(alice_rp, report(alice_rp, "alice@example.net", "5.1.1", "550 5.1.1 user unknown")) == 250
    # Bob's mailbox is full: a bounce, not suppressed.
    assert to_mx(bob_rp, report(bob_rp, "bob@example.net", "5.2.2", "552 5.2.2 mailbox full")) == 250

    bounces = json.loads(p.cli("events", "--kind", "bounce", "--json").stdout)
    by = {e["recipient"]: e for e in bounces}
    assert by["alice@example.net"]["status"] == "5.1.1"
    assert by["alice@example.net"]["classification"] == "invalid_address"
    assert by["bob@example.net"]["classification"] == "mailbox_full"
    assert all("return path" in e["detail"] for e in bounces)

    req = urllib.request.Request(f"http://127.0.0.1:{p.ports['http']}/v3/suppression/bounces",
                                 headers={"Authorization": f"Bearer {p.admin_key}"})
    suppressed = [x["email"] for x in json.loads(urllib.request.urlopen(req, timeout=10).read())]
    assert suppressed == ["alice@example.net"]

    # A forged tag is refused at RCPT, before any body can be sent (the
    # domain is ours, but the tag names no recipient of that message).
    local, domain = alice_rp.rsplit("@", 1)
    forged = local[:-12] + "0" * 12 + "@" + domain
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
        s.ehlo("mx.example.net")
        s.mail("")
        code, _ = s.rcpt(forged)
        assert code == 550, "a forged return path must not reach DATA"
        code, _ = s.rcpt(alice_rp)
        assert code == 250, "the genuine one still passes"
    # Not a return-path address, or another domain's: relaying denied.
    assert to_mx("someone@pst-bounces.example.org", b"Subject: x\r\n\r\nx\r\n") == 550
    assert to_mx(local + "@pst-bounces.other.example", b"Subject: x\r\n\r\nx\r\n") == 550
    assert len(json.loads(p.cli("events", "--kind", "bounce", "--json").stdout)) == 2
