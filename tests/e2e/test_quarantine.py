"""The quarantine of inbound mail, driven through the real binary.

No check holds mail yet (DMARC, virus and spam checks are being built
separately; they will call `Intake::hold`, which has tests of its own in
crates/postern-queue). Mail gets into quarantine here the way an operator
puts it there: `postern quarantine hold-queued ID --reason TEXT` moves an
inbound message that is queued but not yet delivered (its next hop is
deferring it) into quarantine. Everything after that is the same for mail
any check holds: listing, inspecting, releasing to the next hop and
deleting, over the CLI and over HTTP for the tenants that own the
recipients' domains; expiry; audit; metrics."""

import json
import smtplib
import ssl
import tempfile
import urllib.parse

import pytest

from conftest import Postern, api, curl, metric, poll, tenant, wait_until

DOMAINS = ("alpha.test", "bravo.test", "other.test")


def make_server(d, sink, retention=None):
    extra = f'[quarantine]\nretention = "{retention}"\n' if retention else ""
    return Postern(
        d, sink.port,
        # An hour between attempts: a deferred message stays queued,
        # untouched, until it is held or released.
        queue_config='retry_initial = "1h"\nretry_max = "4h"',
        relay_domains=DOMAINS,
        relay_config='recipient_check = "any"',
        extra_config=extra,
    ).start()


@pytest.fixture
def gateway(sink):
    with tempfile.TemporaryDirectory() as d:
        p = make_server(d, sink)
        p.read_admin_key()
        yield p
        p.stop()


MESSAGE = (
    "From: CEO <ceo@outside.example>\r\n"
    "Subject: Urgent \x1b[31mwire\x1b[0m transfer\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/alternative; boundary=sep\r\n"
    "\r\n"
    "--sep\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Pay the invoice today.\r\n"
    "Terminal trick: \x1b]0;owned\x07 done\r\n"
    "--sep\r\n"
    "Content-Type: text/html\r\n"
    "\r\n"
    "<p>Pay</p><script>steal()</script>\r\n"
    "--sep--\r\n"
).encode()


def send_inbound(p, rcpts, body=MESSAGE):
    """Unauthenticated mail to the mx listener, as the internet sends it;
    returns the id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
        s.ehlo("mail.outside.example")
        s.mail("ceo@outside.example")
        for r in rcpts:
            assert s.rcpt(r)[0] == 250, r
        code, reply = s.data(body)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def events(p, *args):
    return json.loads(p.cli("events", "--json", *args).stdout)


def wait_deferred(p, msg_id, count):
    poll(lambda: [e for e in events(p, "--message", msg_id) if e["event"] == "deferred"],
         lambda found: len(found) >= count, what=f"{count} deferred events of {msg_id}")


def hold_queued(p, msg_id, reason):
    """`postern quarantine hold-queued`, again while a delivery attempt
    holds the message (the CLI refuses then, and says so)."""
    def attempt():
        r = p.cli("quarantine", "hold-queued", msg_id, "--reason", reason, check=False)
        if r.returncode != 0:
            assert "in progress" in r.stderr, r.stderr
        return r.returncode == 0 and r
    return wait_until(attempt, what=f"hold-queued {msg_id}")


def seconds(rfc3339):
    from datetime import datetime
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def held(p, *args):
    return json.loads(p.cli("quarantine", "list", "--json", *args).stdout)


def test_tenants_see_and_act_on_their_own_recipients(gateway, sink):
    p = gateway
    alpha = tenant(p, "alpha", "alpha.test")
    bravo = tenant(p, "bravo", "bravo.test")
    p.cli("account", "create", "carol")
    carol = json.loads(p.cli("key", "create", "--account", "carol", "--json").stdout)["key"]

    # One message for three relay domains; the sink (the internal
    # server) defers "defer-" recipients, so it stays queued.
    rcpts = ["defer-ann@alpha.test", "defer-bob@bravo.test", "defer-op@other.test"]
    msg_id = send_inbound(p, rcpts)
    wait_deferred(p, msg_id, 3)
    out = hold_queued(p, msg_id, "phishing reported by the help desk")
    assert "3 recipient(s) held" in out.stdout
    assert json.loads(p.cli("queue", "list", "--json").stdout) == []

    # The operator sees all of it, each recipient with the account that
    # holds its domain verified (other.test: no one, the operator's).
    [m] = held(p)
    assert m["id"] == msg_id and m["from"] == "ceo@outside.example"
    assert m["reason"] == "phishing reported by the help desk"
    assert [(r["email"], r["account"]) for r in m["recipients"]] == [
        ("defer-ann@alpha.test", "alpha"), ("defer-bob@bravo.test", "bravo"), ("defer-op@other.test", None)]
    assert [r["email"] for r in held(p, "--account", "alpha")[0]["recipients"]] == ["defer-ann@alpha.test"]
    assert held(p, "--account", "carol") == []

    # show: header fields and the text part, escapes for every control
    # character, the HTML never shown (there is a text part).
    shown = json.loads(p.cli("quarantine", "show", msg_id, "--json").stdout)
    preview = shown["preview"]
    assert preview["text_source"] == "text/plain"
    assert "Pay the invoice today." in preview["text"]
    assert "\\x1b]0;owned\\x07 done" in preview["text"]
    assert "steal()" not in preview["text"]
    headers = {h["name"]: h["value"] for h in preview["headers"]}
    assert headers["Subject"] == "Urgent \\x1b[31mwire\\x1b[0m transfer"
    assert headers["Received"].startswith("from mail.outside.example ([127.0.0.1]) by postern.test (Postern) with ESMTP id " + msg_id)
    text = p.cli("quarantine", "show", msg_id).stdout
    assert "\x1b" not in text and "\x07" not in text
    assert "Urgent \\x1b[31mwire" in text and "Pay the invoice today." in text

    # Over HTTP each tenant sees only its own recipients.
    status, body = api(p, alpha, "GET", "/v3/quarantine")
    assert status == 200, body
    assert [[r["email"] for r in x["recipients"]] for x in body["messages"]] == [["defer-ann@alpha.test"]]
    status, body = api(p, bravo, "GET", f"/v3/quarantine/{msg_id}")
    assert status == 200, body
    assert [r["email"] for r in body["recipients"]] == ["defer-bob@bravo.test"]
    assert body["preview"]["text_source"] == "text/plain"
    # A tenant with no recipient in it: the id does not exist for it, for
    # reading and for acting; and alpha cannot name bravo's recipient.
    assert api(p, carol, "GET", "/v3/quarantine")[1] == {"messages": []}
    for method, path in [("GET", f"/v3/quarantine/{msg_id}"), ("DELETE", f"/v3/quarantine/{msg_id}"),
                         ("POST", f"/v3/quarantine/{msg_id}/release")]:
        status, body = api(p, carol, method, path)
        assert status == 404, (method, path, status, body)
    bob = urllib.parse.quote("defer-bob@bravo.test")
    assert api(p, alpha, "POST", f"/v3/quarantine/{msg_id}/release?recipient={bob}")[0] == 404
    assert api(p, alpha, "DELETE", f"/v3/quarantine/{msg_id}?recipient={bob}")[0] == 404
    assert len(held(p)[0]["recipients"]) == 3

    # bravo deletes its recipient (curl); it is recorded dropped.
    status, _ = curl(p, "DELETE", f"/v3/quarantine/{msg_id}", key=bravo)
    assert status == 204
    assert api(p, bravo, "GET", f"/v3/quarantine/{msg_id}")[0] == 404
    [dropped] = events(p, "--message", msg_id, "--kind", "dropped")
    assert dropped["recipient"] == "defer-bob@bravo.test" and dropped["account"] == "bravo"
    assert "deleted from quarantine by key:" in dropped["detail"]

    # The internal server takes mail again; alpha releases its recipient,
    # and it arrives as it was received (trace header and all).
    sink.handler.defer = False
    status, body = api(p, alpha, "POST", f"/v3/quarantine/{msg_id}/release")
    assert status == 200 and body == {"released": ["defer-ann@alpha.test"]}, body
    [got] = sink.wait_for(1)
    assert got["rcpt_tos"] == ["defer-ann@alpha.test"] and got["mail_from"] == "ceo@outside.example"
    assert got["data"].startswith(b"Received: from mail.outside.example ([127.0.0.1])\r\n\tby postern.test (Postern) with ESMTP id " + msg_id.encode())
    assert got["data"].endswith(MESSAGE)
    # The operator releases the recipient no account holds.
    out = p.cli("quarantine", "release", msg_id, "--recipient", "defer-op@other.test")
    assert "1 recipient(s) released" in out.stdout
    got = sink.wait_for(2)[1]
    assert got["rcpt_tos"] == ["defer-op@other.test"] and got["data"].endswith(MESSAGE)
    assert held(p) == []
    assert p.cli("quarantine", "release", msg_id, check=False).returncode != 0

    # The send log tells it per recipient, under each owner.
    log = [(e["event"], e["recipient"], e["account"]) for e in events(p, "--message", msg_id)]
    for r, owner in zip(rcpts, ["alpha", "bravo", None]):
        assert ("quarantined", r, owner) in log
    assert ("processed", "defer-ann@alpha.test", "alpha") in log
    assert ("processed", "defer-op@other.test", None) in log
    # Delivered as relay mail is (no sending account); the event follows
    # the sink's 250.
    poll(lambda: sorted(e["recipient"] for e in events(p, "--message", msg_id, "--kind", "delivered")),
         lambda d: d == ["defer-ann@alpha.test", "defer-op@other.test"], what="the delivered events")

    # Every action is in the audit log, once per account it touched, with
    # who took it.
    audit = json.loads(p.cli("audit", "--kind", "quarantine.", "--json").stdout)
    seen = sorted((a["kind"], a["account"] or "-", a["actor"].split(":")[0]) for a in audit)
    assert seen == sorted([
        ("quarantine.hold", "alpha", "cli"), ("quarantine.hold", "bravo", "cli"), ("quarantine.hold", "-", "cli"),
        ("quarantine.delete", "bravo", "key"),
        ("quarantine.release", "alpha", "key"), ("quarantine.release", "-", "cli"),
    ]), audit
    assert all(msg_id in a["detail"] for a in audit)

    # And counted, whichever process acted (the CLI's count reaches the
    # server's /metrics through the store, within its 10 s refresh).
    poll(lambda: {a: metric(p, "postern_quarantine_total", action=a) for a in ("held", "released", "deleted", "expired")},
         lambda c: c == {"held": 3, "released": 2, "deleted": 1, "expired": 0},
         timeout=30, what="the quarantine counters")
    assert metric(p, "postern_quarantine_held") == 0


def test_mail_an_account_sent_is_not_quarantined(gateway, sink):
    """The quarantine holds inbound mail: a message an account submitted
    stays in the queue (its sender's own; `queue delete` is the lever)."""
    p = gateway
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.login("apikey", p.admin_key)
        s.sendmail("news@example.org", ["defer-reader@example.net"], b"Subject: s\r\n\r\nx\r\n")
    [queued] = poll(lambda: json.loads(p.cli("queue", "list", "--json").stdout), lambda q: len(q) == 1,
                    what="the queued message")
    wait_deferred(p, queued["message_id"], 1)
    r = p.cli("quarantine", "hold-queued", queued["message_id"], "--reason", "x", check=False)
    assert r.returncode != 0 and "sent by account admin" in r.stderr, r.stderr
    assert held(p) == []
    assert len(json.loads(p.cli("queue", "list", "--json").stdout)) == 1


def test_held_mail_expires_after_the_retention(sink):
    with tempfile.TemporaryDirectory() as d:
        p = make_server(d, sink, retention="3s")
        try:
            p.read_admin_key()
            msg_id = send_inbound(p, ["defer-x@other.test"])
            wait_deferred(p, msg_id, 1)
            hold_queued(p, msg_id, "suspected malware")
            [entry] = held(p)
            poll(lambda: held(p), lambda h: h == [], timeout=20, what="the entry to expire")

            log = events(p, "--message", msg_id)
            [q] = [e for e in log if e["event"] == "quarantined"]
            [gone] = [e for e in log if e["event"] == "dropped"]
            assert gone["detail"] == "expired from quarantine after 3s"
            # Not before its retention was over.
            assert seconds(gone["time"]) >= seconds(entry["held"]) + 3, (entry, gone)
            assert seconds(gone["time"]) >= seconds(q["time"]) + 3
            # Deleted, not released (a release records `processed` in the
            # commit that takes it out): nothing after it, nothing queued.
            assert [e["event"] for e in log][-1] == "dropped"
            assert "processed" not in [e["event"] for e in log if e["seq"] > q["seq"]]
            assert json.loads(p.cli("queue", "list", "--json").stdout) == []

            [a] = json.loads(p.cli("audit", "--kind", "quarantine.expire", "--json").stdout)
            assert a["actor"] == "server:quarantine-retention" and a["account"] is None
            assert f"message={msg_id}" in a["detail"] and "defer-x@other.test" in a["detail"]
            poll(lambda: metric(p, "postern_quarantine_total", action="expired"), lambda n: n == 1,
                 what="the expiry counted")
        finally:
            p.stop()
