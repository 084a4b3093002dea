"""Single sender verification as a user meets it: the sendgrid library adds
an address over /v3/verified_senders, Postern mails it a one-time link
(captured by the sink), the link verifies it once, and only then may the
account send as that address (and only that address) over SMTP. Tokens
expire, work once, and verification mails are rate-limited."""

import base64
import email
import json
import re
import tempfile
import urllib.error
import urllib.request

import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from conftest import Postern, link_in, send_as, wait_for_clock


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_single_sender_verification(strict, sink):
    p = strict
    sg = SendGridAPIClient(api_key=p.admin_key, host=f"http://127.0.0.1:{p.ports['http']}")
    r = sg.client.verified_senders.post(request_body={
        "nickname": "Alice", "from_email": "Alice@Gmail.example", "from_name": "Alice",
        "reply_to": "alice@gmail.example", "address": "1 Main St", "city": "Springfield", "country": "US",
    })
    assert r.status_code == 201
    created = json.loads(r.body)
    assert created["from_email"] == "alice@gmail.example"
    assert created["verified"] is False and created["city"] == "Springfield"

    # Not yet verified: refused.
    code, text = send_as(p, p.admin_key, "alice@gmail.example", "Alice <alice@gmail.example>")
    assert code == 550 and "5.7.1" in text

    link = link_in(sink, "alice@gmail.example", 1)
    assert link.startswith(f"http://127.0.0.1:{p.ports['http']}/")
    status, body = get(link)  # no API key: the token is the proof
    assert status == 200 and body["verified"] is True
    # Single use.
    status, body = get(link)
    assert status == 404 and "not valid" in body["errors"][0]["message"]
    # A made-up token.
    status, _ = get(link[: link.rindex("/") + 1] + "A" * 43)
    assert status == 404

    listed = json.loads(sg.client.verified_senders.get().body)["results"]
    assert [s["verified"] for s in listed] == [True]

    # That address, envelope and From; not another one at its domain.
    assert send_as(p, p.admin_key, "alice@gmail.example", "Alice <alice@gmail.example>")[0] == 250
    code, text = send_as(p, p.admin_key, "bob@gmail.example", "bob@gmail.example")
    assert code == 550 and "gmail.example" in text
    code, _ = send_as(p, p.admin_key, "alice@gmail.example", "bob@gmail.example")
    assert code == 550

    # Rate limit: a second mail right away is refused with 429.
    r = sg.client.verified_senders.post(request_body={"from_email": "bob@gmail.example", "nickname": "Bob"})
    bob = json.loads(r.body)["id"]
    with pytest.raises(HTTPError) as e:
        sg.client.verified_senders.resend._(bob).post()
    assert e.value.status_code == 429
    assert "try again" in json.loads(e.value.body)["errors"][0]["message"]
    # Another account cannot see, resend or delete it.
    p.cli("account", "create", "acme")
    acme = json.loads(p.cli("key", "create", "--account", "acme", "--json").stdout)["key"]
    sg_acme = SendGridAPIClient(api_key=acme, host=f"http://127.0.0.1:{p.ports['http']}")
    assert json.loads(sg_acme.client.verified_senders.get().body)["results"] == []
    with pytest.raises(HTTPError) as e:
        sg_acme.client.verified_senders._(bob).delete()
    assert e.value.status_code == 404
    # ... nor send as Alice.
    assert send_as(p, acme, "alice@gmail.example", "alice@gmail.example")[0] == 550

    # Deleting a sender ends its use.
    alice = created["id"]
    assert sg.client.verified_senders._(alice).delete().status_code == 204
    assert send_as(p, p.admin_key, "alice@gmail.example", "alice@gmail.example")[0] == 550

    audit = p.cli("audit", "--json").stdout
    assert "sender.verify" in audit and "sender.add" in audit


def test_links_expire_and_cli(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, enforce_senders=True,
                    extra_config='[senders]\nverification_token_ttl = "4s"\nverification_resend_interval = "0s"\n').start()
        try:
            p.read_admin_key()
            out = json.loads(p.cli("sender", "add", "carol@example.com", "--json").stdout)
            assert out["verified"] is False
            # Links live 4 s: long enough for the second one to be mailed,
            # read and confirmed on a busy machine.
            link = link_in(sink, "carol@example.com", 1)
            # The mail says until when the link works; after that, it does not.
            mail = [m for m in sink.messages if "carol@example.com" in m["rcpt_tos"]][0]
            text = email.message_from_bytes(mail["data"]).get_payload(decode=True).decode()
            until = re.search(r"works once, until (\S+?)\.?\s", text).group(1)
            wait_for_clock(until)
            status, body = get(link)
            assert status == 410 and "expired" in body["errors"][0]["message"]
            # A new link (the CLI's resend), confirmed from the CLI with its token.
            p.cli("sender", "resend", str(out["id"]))
            token = link_in(sink, "carol@example.com", 2).rsplit("/", 1)[1]
            # A new token, not the old one again; both 256 bits in base64url.
            first = link.rsplit("/", 1)[1]
            assert token != first
            for t in (first, token):
                assert re.fullmatch(r"[A-Za-z0-9_-]{43}", t), t
                assert len(base64.urlsafe_b64decode(t + "=")) == 32
            # A token may begin with "-" (base64url, one in 64): after "--"
            # it is not taken for an option.
            confirmed = p.cli("sender", "confirm", "--", token)
            assert "carol@example.com is now a verified sender" in confirmed.stdout
            listed = json.loads(p.cli("sender", "list", "--json").stdout)
            assert listed[0]["verified"] is True
            assert send_as(p, p.admin_key, "carol@example.com", "carol@example.com")[0] == 250
        finally:
            p.stop()
