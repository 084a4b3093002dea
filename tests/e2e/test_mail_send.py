"""POST /v3/mail/send with SendGrid's own Python library, changing only
the base URL: messages are built per personalization, queued through the
same intake as SMTP (DKIM-signed for a verified domain) and delivered to
the sink; an unverified sender gets 403 with a clear message and a
`dropped` event; malformed requests get SendGrid's error shape."""

import base64
import email
import email.policy
import json

import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment, Bcc, Content, Disposition, FileContent, FileName, FileType, From,
    Mail, MailSettings, SandBoxMode, To,
)

from conftest import api, wait_until



def client(p, key):
    return SendGridAPIClient(api_key=key, host=f"http://127.0.0.1:{p.ports['http']}")


def message(sender="news@example.org"):
    m = Mail(
        from_email=From(sender, "Example News"),
        to_emails=To("reader@example.net", "Reader"),
        subject="Hello from the API",
        plain_text_content=Content("text/plain", "plain body"),
        html_content=Content("text/html", "<p>html body</p>"),
    )
    m.add_bcc(Bcc("auditor@example.net"))
    m.attachment = Attachment(
        FileContent(base64.b64encode(b"report contents").decode()),
        FileName("report.txt"), FileType("text/plain"), Disposition("attachment"),
    )
    return m


def test_mail_send_with_the_sendgrid_library(strict, sink):
    p = strict
    sg = client(p, p.admin_key)

    # Unverified sender: 403, SendGrid's error shape, a dropped event.
    with pytest.raises(HTTPError) as e:
        sg.send(message())
    assert e.value.status_code == 403
    err = json.loads(e.value.body)["errors"][0]
    assert "verified Sender Identity" in err["message"] and "example.org" in err["message"]
    assert err["field"] == "from"
    dropped = json.loads(p.cli("events", "--kind", "dropped", "--json").stdout)
    assert len(dropped) == 2 and all("not verified" in ev["detail"] for ev in dropped), dropped
    assert "sender.refused" in p.cli("audit", "--json").stdout

    p.cli("domain", "add", "example.org", "--account", "admin")
    p.cli("domain", "verify", "example.org", "--operator")
    # Verified without DNS: the operator vouches for the return-path
    # records too, so mail leaves with VERP return paths.
    p.cli("domain", "return-path", "example.org", "on")
    r = sg.send(message())
    assert r.status_code == 202
    message_id = r.headers["X-Message-Id"]
    assert message_id

    both = sink.wait_for(2)
    # One transaction per recipient, each with its VERP return path.
    assert sorted(r for m in both for r in m["rcpt_tos"]) == ["auditor@example.net", "reader@example.net"]
    assert all(m["mail_from"].endswith("@pst-bounces.example.org") for m in both)
    got = next(m for m in both if m["rcpt_tos"] == ["reader@example.net"])
    msg = email.message_from_bytes(got["data"])
    assert msg["Subject"] == "Hello from the API"
    assert "auditor" not in got["data"].decode(errors="replace").split("\r\n\r\n", 1)[0], "Bcc stays out of the headers"
    assert msg["DKIM-Signature"] is not None, "signed for the verified domain"
    assert f"id {message_id}" in msg["Received"].replace("\r\n", " ").replace("\t", " ")
    # The attachment is text/plain too: body parts and attachments are told
    # apart by Content-Disposition (RFC 2183), so each is checked on its own.
    leaves = [part for part in msg.walk() if not part.is_multipart()]
    bodies = [(part.get_content_type(), part.get_payload(decode=True).decode())
              for part in leaves if part.get_filename() is None]
    assert [(t, v.strip()) for t, v in bodies] == [("text/plain", "plain body"), ("text/html", "<p>html body</p>")], bodies
    attached = [(part.get_filename(), part.get_content_disposition(), part.get_payload(decode=True))
                for part in leaves if part.get_filename() is not None]
    assert attached == [("report.txt", "attachment", b"report contents")], attached

    # On behalf of a subuser: its message (in its send log), sent as its
    # parent's verified domain.
    p.cli("subuser", "create", "news-sub", "--account", "admin")
    sg_sub = SendGridAPIClient(api_key=p.admin_key, host=f"http://127.0.0.1:{p.ports['http']}",
                               impersonate_subuser="news-sub")
    sub_id = sg_sub.send(message()).headers["X-Message-Id"]
    sub_events = json.loads(p.cli("events", "--account", "news-sub", "--json").stdout)
    assert {e["message_id"] for e in sub_events} == {sub_id}, sub_events

    # The send log finds it by the id the API returned.
    shown = json.loads(p.cli("events", "--message", message_id, "--json").stdout)
    assert {ev["event"] for ev in shown} >= {"processed"}, shown


def test_mail_send_errors(strict, sink):
    p = strict
    sg = client(p, p.admin_key)
    # No mail.send scope: 403 naming the scope.
    limited = json.loads(p.cli("key", "create", "--scopes", "messages.read", "--json").stdout)["key"]
    with pytest.raises(HTTPError) as e:
        client(p, limited).send(message())
    assert e.value.status_code == 403 and "mail.send" in e.value.body.decode()
    # No from: 400 with the field.
    with pytest.raises(HTTPError) as e:
        sg.client.mail.send.post(request_body={
            "personalizations": [{"to": [{"email": "a@example.net"}]}],
            "subject": "s", "content": [{"type": "text/plain", "value": "x"}]})
    assert e.value.status_code == 400
    assert json.loads(e.value.body)["errors"][0]["field"] == "from.email"
    # Header injection through a custom header: refused.
    with pytest.raises(HTTPError) as e:
        sg.client.mail.send.post(request_body={
            "personalizations": [{"to": [{"email": "a@example.net"}]}],
            "from": {"email": "news@example.org"}, "subject": "s",
            "headers": {"X-Tag": "x\r\nBcc: victim@example.com"},
            "content": [{"type": "text/plain", "value": "x"}]})
    assert e.value.status_code == 400 and "line break" in e.value.body.decode()
    # Templates are refused, not silently ignored.
    with pytest.raises(HTTPError) as e:
        sg.client.mail.send.post(request_body={
            "personalizations": [{"to": [{"email": "a@example.net"}]}],
            "from": {"email": "news@example.org"}, "template_id": "d-123"})
    assert e.value.status_code == 400 and "template" in e.value.body.decode()
    # Without a key: 401.
    with pytest.raises(HTTPError) as e:
        client(p, "pst_not_a_key").send(message())
    assert e.value.status_code == 401
    # Sandbox mode: validated, not sent. A positive control follows it
    # through the same queue to the same sink: once the control has arrived
    # (both of its recipients), a sandboxed message that had been queued
    # earlier would have been delivered too, so the sink must hold exactly
    # the control's two copies.
    p.cli("domain", "add", "example.org", "--account", "admin")
    p.cli("domain", "verify", "example.org", "--operator")
    m = message()
    m.subject = "sandboxed"
    m.mail_settings = MailSettings(sandbox_mode=SandBoxMode(True))
    assert sg.send(m).status_code == 200
    control = message()
    control.subject = "control"
    assert sg.send(control).status_code == 202
    copies = wait_until(lambda: sum(len(x["rcpt_tos"]) for x in sink.messages) >= 2 and sink.messages,
                        what="the control's two recipients")
    subjects = [email.message_from_bytes(x["data"])["Subject"] for x in copies]
    assert set(subjects) == {"control"}, subjects
    assert sorted(r for x in copies for r in x["rcpt_tos"]) == ["auditor@example.net", "reader@example.net"]
    events = json.loads(p.cli("events", "--kind", "processed", "--json").stdout)
    assert len({ev["message_id"] for ev in events}) == 1, events


def test_header_fields_are_validated(strict, sink):
    """Issue 10 item 10: every request field that is written into a header
    is checked; a line break (or a bracket that ends the Content-ID) is a
    400 naming the field, and nothing is queued."""
    p = strict
    sg = client(p, p.admin_key)
    p.cli("domain", "add", "example.org", "--account", "admin")
    p.cli("domain", "verify", "example.org", "--operator")

    def request(**changes):
        body = {
            "personalizations": [{"to": [{"email": "reader@example.net", "name": "Reader"}]}],
            "from": {"email": "news@example.org", "name": "Example News"},
            "subject": "s",
            "content": [{"type": "text/html", "value": '<img src="cid:logo">'}],
            "attachments": [{
                "content": base64.b64encode(b"png").decode(), "filename": "logo.png",
                "type": "image/png", "disposition": "inline", "content_id": "logo",
            }],
        }
        for path, value in changes.items():
            target = body
            keys = path.split(".")
            for k in keys[:-1]:
                target = target[int(k)] if k.isdigit() else target[k]
            target[keys[-1]] = value
        return body

    inj = "x\r\nBcc: victim@example.com"
    cases = [
        ({"attachments.0.content_id": inj}, "attachments.content_id"),
        ({"attachments.0.content_id": "logo>\r\nX-Evil: 1"}, "attachments.content_id"),
        ({"attachments.0.content_id": "logo><evil"}, "attachments.content_id"),
        ({"from.name": inj}, "from.name"),
        ({"personalizations.0.to.0.name": inj}, "personalizations.to.name"),
        ({"attachments.0.filename": "a\r\nb.png"}, "attachments.filename"),
        ({"attachments.0.type": "image/png\r\nX-Evil: 1"}, "attachments.type"),
        ({"personalizations.0.subject": inj}, "personalizations.subject"),
        ({"reply_to": {"email": "news@example.org", "name": inj}}, "reply_to.name"),
    ]
    for changes, field in cases:
        with pytest.raises(HTTPError) as e:
            sg.client.mail.send.post(request_body=request(**changes))
        assert e.value.status_code == 400, (changes, e.value.body)
        errors = json.loads(e.value.body)["errors"]
        assert errors[0]["field"] == field, (changes, errors)
    # Nothing was queued: no message in the send log, none delivered.
    assert json.loads(p.cli("events", "--json").stdout) == []
    # The same request without the injection is sent (the setup is sound).
    assert sg.client.mail.send.post(request_body=request()).status_code == 202
    assert len(sink.wait_for(1)) == 1


# Features the server does not have yet, each refused with 400 naming the
# field, never accepted and silently ignored (a scheduled or templated
# message sent at once, or with its placeholders unfilled, would be wrong).
UNSUPPORTED = [
    ("send_at", {"send_at": 1700000000}, {}),
    ("batch_id", {"batch_id": "YOUR_BATCH_ID"}, {}),
    ("personalizations.send_at", {}, {"send_at": 1700000000}),
    ("personalizations.substitutions", {}, {"substitutions": {"-name-": "Ann"}}),
    ("personalizations.dynamic_template_data", {}, {"dynamic_template_data": {"name": "Ann"}}),
]


def test_unsupported_features_are_refused_naming_the_field(postern, sink):
    p = postern
    for field, top, personalization in UNSUPPORTED:
        request = {
            "personalizations": [{"to": [{"email": "reader@example.net"}], **personalization}],
            "from": {"email": "news@example.org"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "Hello -name-"}],
            **top,
        }
        status, body = api(p, p.admin_key, "POST", "/v3/mail/send", request)
        assert status == 400, (field, status, body)
        assert body["errors"][0]["field"] == field, (field, body)
        assert "not supported" in body["errors"][0]["message"], body
    # The same request without them is sent, so the refusals above were
    # for those fields alone.
    request = {
        "personalizations": [{"to": [{"email": "reader@example.net"}], "substitutions": {}}],
        "from": {"email": "news@example.org"}, "subject": "s",
        "content": [{"type": "text/plain", "value": "Hello"}],
    }
    assert api(p, p.admin_key, "POST", "/v3/mail/send", request)[0] == 202
    sink.wait_for(1)
    # Every refusal came before intake: the one message accepted is the
    # only one the send log knows of.
    processed = json.loads(p.cli("events", "--kind", "processed", "--json").stdout)
    assert len(processed) == 1, processed


def test_cc_and_reply_to_reach_the_message(postern, sink):
    """cc recipients get the message and are shown in Cc; reply_to becomes
    the Reply-To field (RFC 5322 §3.6.2, §3.6.3)."""
    p = postern
    status, body = api(p, p.admin_key, "POST", "/v3/mail/send", {
        "personalizations": [{
            "to": [{"email": "reader@example.net"}],
            "cc": [{"email": "copy@example.com", "name": "Copy"}],
        }],
        "from": {"email": "news@example.org"},
        "reply_to": {"email": "replies@example.org", "name": "Replies"},
        "subject": "with cc",
        "content": [{"type": "text/plain", "value": "x"}],
    })
    assert status == 202, body
    # Two domains: one transaction each.
    got = sink.wait_for(2)
    assert sorted(r for m in got for r in m["rcpt_tos"]) == ["copy@example.com", "reader@example.net"]
    for m in got:
        msg = email.message_from_bytes(m["data"], policy=email.policy.default)
        assert [a.addr_spec for a in msg["Cc"].addresses] == ["copy@example.com"]
        assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["replies@example.org"]
