"""A recipient the next hop refuses, or one still deferred at
`queue.max_age`, produces an RFC 3464 DSN to the sender, parsed here with
Python's email package; RET=FULL returns the whole message; NOTIFY=NEVER
and a null sender produce none."""

import email
import json
import smtplib
import ssl
import tempfile
import time
from email import policy

from conftest import Postern, poll, wait_until


def send(postern, mail_from, rcpts, body, rcpt_options=(), mail_options=("RET=HDRS", "ENVID=batch-42"), key=None):
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        s.login("apikey", key or postern.admin_key)
        s.ehlo()
        code, _ = s.mail(mail_from, list(mail_options))
        assert code == 250
        for r in rcpts:
            code, msg = s.rcpt(r, list(rcpt_options))
            assert code == 250, msg
        code, _ = s.data(body)
        assert code == 250


def test_a_hard_bounce_sends_a_dsn(postern, sink):
    body = b"From: sender@example.org\r\nSubject: will bounce\r\nMessage-ID: <b1@example.org>\r\n\r\nsecret body\r\n"
    send(postern, "sender@example.org", ["reject-me@example.net", "ok@example.net"], body, ["NOTIFY=FAILURE", "ORCPT=rfc822;Reject-Me@example.net"])
    msgs = sink.wait_for(2, timeout=30)  # the delivered copy and the DSN
    dsns = [m for m in msgs if b"multipart/report" in m["data"]]
    assert len(dsns) == 1, msgs
    dsn = dsns[0]
    assert dsn["rcpt_tos"] == ["sender@example.org"]
    parsed = email.message_from_bytes(dsn["data"], policy=policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["Auto-Submitted"] == "auto-replied"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    # message/delivery-status: one block per message, then one per recipient.
    blocks = parts[1].get_payload()
    per_message, per_recipient = blocks[0], blocks[1:]
    assert per_message["Reporting-MTA"] == "dns; postern.test"
    assert per_message["Original-Envelope-Id"] == "batch-42"
    assert len(per_recipient) == 1
    r = per_recipient[0]
    assert r["Final-Recipient"] == "rfc822; reject-me@example.net"
    assert r["Original-Recipient"] == "rfc822; Reject-Me@example.net"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert "User unknown" in r["Diagnostic-Code"]
    # RET=HDRS: the headers come back, the body does not.
    returned = parts[2].get_content()
    assert "Subject: will bounce" in returned and "secret body" not in returned
    import json
    # The DSN is queued before the bounce is logged: the log may trail the
    # sink by a moment.
    failed = wait_until(lambda: [e for e in json.loads(postern.cli("events", "--json").stdout) if e["event"] == "bounce"],
                        timeout=10, what="the bounce event")
    assert "DSN queued as" in failed[0]["detail"]
    # The send log classifies the bounce and says how the attempt went.
    assert failed[0]["status"] == "5.1.1"
    assert failed[0]["classification"] == "invalid_address"
    assert failed[0]["attempt"] == 1
    assert failed[0]["remote_ip"] == "127.0.0.1"


def test_notify_never_and_null_sender_get_no_dsn(postern, sink):
    send(postern, "sender@example.org", ["reject-a@example.net", "ok@example.net"], b"Subject: n\r\n\r\nx\r\n", ["NOTIFY=NEVER"])
    send(postern, "", ["reject-b@example.net", "ok2@example.net"], b"Subject: null\r\n\r\nx\r\n")
    sink.wait_for(2, timeout=30)
    # A DSN would be queued before its bounce is logged: once both bounces
    # are logged without one, none can follow.
    import json
    bounces = wait_until(
        lambda: (b := json.loads(postern.cli("events", "--kind", "bounce", "--json").stdout)) and len(b) >= 2 and b,
        timeout=30, what="both bounce events")
    assert sorted(e["recipient"] for e in bounces) == ["reject-a@example.net", "reject-b@example.net"], bounces
    assert not [e for e in bounces if "DSN" in e["detail"]], bounces
    reports = [m for m in sink.messages if b"multipart/report" in m["data"]]
    assert reports == [], "no DSN for NOTIFY=NEVER or for a null sender"


def test_hard_bounces_are_suppressed_per_account(postern, sink):
    import json
    from sendgrid import SendGridAPIClient

    def events_for(rcpt):
        return [e for e in json.loads(postern.cli("events", "--json").stdout) if e["recipient"] == rcpt]

    def wait_for_kind(rcpt, kind, count):
        wait_until(lambda: len([e for e in events_for(rcpt) if e["event"] == kind]) >= count,
                   timeout=30, what=f"{kind} x{count} for {rcpt}")

    rcpt = "reject-s@example.net"
    send(postern, "sender@example.org", [rcpt], b"Subject: first\r\n\r\nx\r\n")
    wait_for_kind(rcpt, "bounce", 1)
    sg = SendGridAPIClient(api_key=postern.admin_key, host=f"http://127.0.0.1:{postern.ports['http']}")
    listed = wait_until(lambda: json.loads(sg.client.suppression.bounces.get().body),
                        timeout=10, what="the suppression entry")
    assert [(e["email"], e["status"]) for e in listed] == [(rcpt, "5.1.1")]

    # The next message to that address is dropped, never attempted.
    send(postern, "sender@example.org", [rcpt], b"Subject: second\r\n\r\nx\r\n")
    wait_for_kind(rcpt, "dropped", 1)
    assert len([e for e in events_for(rcpt) if e["event"] == "bounce"]) == 1

    # Removed from the list, it is attempted (and bounces) again.
    assert sg.client.suppression.bounces._(rcpt).delete().status_code == 204
    assert json.loads(sg.client.suppression.bounces.get().body) == []
    send(postern, "sender@example.org", [rcpt], b"Subject: third\r\n\r\nx\r\n")
    wait_for_kind(rcpt, "bounce", 2)


def dsn_parts(message):
    """A DSN as the sink got it: (parsed message, its three parts, the
    per-recipient blocks of message/delivery-status)."""
    parsed = email.message_from_bytes(message["data"], policy=policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    parts = list(parsed.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    return parsed, parts, parts[1].get_payload()[1:]


def reports(sink):
    return [m for m in sink.messages if b"multipart/report" in m["data"]]


def test_ret_full_returns_the_whole_message(postern, sink):
    # RFC 3461 §4.3: RET=FULL asks for the entire message in a failed DSN.
    body = (
        b"From: sender@example.org\r\nSubject: return it all\r\nMessage-ID: <full@example.org>\r\n"
        b"\r\nthe whole body\r\n..a line that was dot-stuffed\r\nlast line\r\n"
    )
    send(postern, "sender@example.org", ["reject-full@example.net"], body, mail_options=["RET=FULL"])
    dsn = poll(lambda: reports(sink), lambda r: r, what="a DSN")[0]
    assert dsn["rcpt_tos"] == ["sender@example.org"]
    _, parts, recipients = dsn_parts(dsn)
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "message/rfc822"]
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in recipients] == [
        ("rfc822; reject-full@example.net", "failed", "5.1.1")
    ]
    # The returned message is the original, headers and body (a line
    # starting with a dot too: stuffed on the wire, RFC 5321 §4.5.2), byte
    # for byte after Postern's own Received: line, last line break included.
    returned = parts[2].get_payload()[0].as_bytes(policy=policy.SMTP)
    assert returned.endswith(body), returned
    assert returned.startswith(b"Received: "), returned[:80]


def test_a_message_still_deferred_at_max_age_bounces_with_a_dsn(sink):
    # "defer-" recipients get 452 from the sink every time: retried every
    # 200-400 ms until queue.max_age (3 s) leaves no room for another try.
    queue = 'retry_initial = "200ms"\nretry_max = "400ms"\nmax_age = "3s"'
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, queue_config=queue).start()
        p.read_admin_key()
        sent_at = time.monotonic()
        send(p, "sender@example.org", ["defer-old@example.net"], b"Subject: too late\r\n\r\nbody\r\n",
             mail_options=["ENVID=expiring-1"])

        def events():
            return [e for e in json.loads(p.cli("events", "--json").stdout) if e["recipient"] == "defer-old@example.net"]

        settled = poll(events, lambda es: any(e["event"] == "bounce" for e in es), timeout=20, what="a bounce")
        bounced_after = time.monotonic() - sent_at
        dsn = poll(lambda: reports(sink), lambda r: r, timeout=20, what="a DSN")[0]
        p.stop()

    deferred = [e for e in settled if e["event"] == "deferred"]
    bounce = [e for e in settled if e["event"] == "bounce"]
    assert len(bounce) == 1 and [e["event"] for e in settled if e["event"] == "delivered"] == []
    # Not given up before max_age came close: every try until then was made
    # (the last try is the one after which the next would fall past 3 s).
    assert bounced_after >= 3.0 - 0.4 * 1.2, bounced_after
    assert len(deferred) >= 4, settled
    assert all("452 4.2.2" in e["detail"] for e in deferred), deferred
    b = bounce[0]
    assert "queue.max_age reached" in b["detail"] and "452 4.2.2" in b["detail"], b
    assert b["status"] == "4.4.7", b  # RFC 3463: delivery time expired
    assert b["attempt"] == len(deferred) + 1, settled
    assert "DSN queued as" in b["detail"], b

    assert dsn["rcpt_tos"] == ["sender@example.org"]
    parsed, parts, recipients = dsn_parts(dsn)
    assert parsed["To"].addresses[0].addr_spec == "sender@example.org"
    assert parts[1].get_payload()[0]["Original-Envelope-Id"] == "expiring-1"
    assert len(recipients) == 1
    r = recipients[0]
    assert r["Final-Recipient"] == "rfc822; defer-old@example.net"
    assert r["Action"] == "failed"
    assert r["Status"] == "4.4.7"
    assert "452 4.2.2" in r["Diagnostic-Code"] and "Mailbox full" in r["Diagnostic-Code"], r["Diagnostic-Code"]
    # No RET: headers only (RFC 3461 §4.3 leaves it to the MTA).
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "Subject: too late" in parts[2].get_content() and "body" not in parts[2].get_content().split("Subject")[1]


def test_a_suppression_holds_only_for_its_account(postern, sink):
    """The suppression list is the account's own: another account's mail
    to an address the first one suppressed is still attempted."""
    import json
    from sendgrid import SendGridAPIClient

    rcpt = "reject-p@example.net"

    def events(kind):
        return [e for e in json.loads(postern.cli("events", "--kind", kind, "--json").stdout)
                if e["recipient"] == rcpt]

    send(postern, "sender@example.org", [rcpt], b"Subject: first\r\n\r\nx\r\n")
    wait_until(lambda: len(events("bounce")) == 1, timeout=30, what="the first bounce")
    sg = SendGridAPIClient(api_key=postern.admin_key, host=f"http://127.0.0.1:{postern.ports['http']}")
    wait_until(lambda: json.loads(sg.client.suppression.bounces.get().body),
               timeout=10, what="the admin account's suppression entry")

    postern.cli("account", "create", "other")
    other = json.loads(postern.cli("key", "create", "--account", "other", "--json").stdout)["key"]
    send(postern, "sender@example.org", [rcpt], b"Subject: from other\r\n\r\nx\r\n", key=other)
    # Attempted: the sink refuses it again, so a second bounce (other's).
    bounced = wait_until(lambda: len(events("bounce")) == 2 and events("bounce"),
                         timeout=30, what="the other account's bounce")
    assert [e["account"] for e in bounced] == ["admin", "other"], bounced
    assert events("dropped") == []
    # The admin account's own next message is still dropped, never attempted.
    send(postern, "sender@example.org", [rcpt], b"Subject: again\r\n\r\nx\r\n")
    dropped = wait_until(lambda: events("dropped"), timeout=30, what="admin's dropped event")
    assert [e["account"] for e in dropped] == ["admin"], dropped
    assert len(events("bounce")) == 2
