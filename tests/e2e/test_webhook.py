"""Event webhooks as a SendGrid user sets and receives them: settings and
the signing key through the `sendgrid` library, events POSTed as a JSON
array, signatures checked with the library's own EventWebhook verifier,
retries after a failing receiver without losing or repeating events, and
the SSRF guard on the default configuration."""

import json
import smtplib
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from conftest import Postern, free_port, wait_until


class Receiver:
    def __init__(self, fail_first=0):
        self.requests = []  # (headers, body) of every POST answered 2xx
        self.failed = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    if outer.failed < outer.fail_first:
                        outer.failed += 1
                        self.send_response(500)
                        self.end_headers()
                        return
                    outer.requests.append((dict(self.headers), body.decode()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/events"

    def events(self):
        with self.lock:
            return [e for _, body in self.requests for e in json.loads(body)]

    def wait_events(self, n, timeout=30):
        wait_until(lambda: len(self.events()) >= n, timeout=timeout, what=f"{n} webhook events")
        return self.events()

    def stop(self):
        self.server.shutdown()
        # Closed, not just no longer served: connections are refused.
        self.server.server_close()


WEBHOOK_CONFIG = """
[webhooks]
allow_plain_http = true
allow_private_destinations = true
flush_interval = "200ms"
retry_max = "1s"
"""


@pytest.fixture
def hooked(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, extra_config=WEBHOOK_CONFIG).start()
        p.read_admin_key()
        yield p
        p.stop()


def api(p, key=None):
    return SendGridAPIClient(api_key=key or p.admin_key, host=f"http://127.0.0.1:{p.ports['http']}")


def webhook_state(p):
    return json.loads(p.cli("webhook", "show", "admin", "--json").stdout)


def caught_up(p):
    """Whether admin's webhook cursor has reached the newest event in the
    log (the dispatcher sends only events after its cursor)."""
    seqs = [e["seq"] for e in json.loads(p.cli("events", "--json").stdout)]
    return webhook_state(p)["cursor"] >= max(seqs)


def send(p, key, rcpts):
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.login("apikey", key)
        s.sendmail("sender@example.org", rcpts, b"Subject: hooked\r\n\r\nbody\r\n")


def test_signed_batched_events_survive_a_failing_receiver(hooked, sink):
    p = hooked
    receiver = Receiver(fail_first=2)
    try:
        sg = api(p)
        settings = {
            "enabled": True, "url": receiver.url, "processed": True, "delivered": True,
            "deferred": True, "bounce": True, "dropped": True, "open": True, "click": False,
        }
        r = sg.client.user.webhooks.event.settings.patch(request_body=settings)
        got = json.loads(r.body)
        assert got["enabled"] and got["url"] == receiver.url and got["bounce"]
        assert got["open"] is False, "no tracking: open is never on"
        r = sg.client.user.webhooks.event.settings.signed.patch(request_body={"enabled": True})
        public_key = json.loads(r.body)["public_key"]
        assert public_key.startswith("MFkw")
        assert json.loads(sg.client.user.webhooks.event.settings.signed.get().body)["public_key"] == public_key

        # Another account's mail never reaches this webhook.
        p.cli("account", "create", "other")
        other = json.loads(p.cli("key", "create", "--account", "other", "--json").stdout)["key"]
        send(p, other, ["someone@example.net"])
        send(p, p.admin_key, ["ok@example.net", "reject-x@example.net"])
        receiver.wait_events(4)
        # Once the webhook's cursor has passed every event in the log,
        # nothing already logged can be posted again.
        wait_until(lambda: caught_up(p), timeout=10, what="the webhook cursor at the end of the log")
        events = receiver.events()
        assert receiver.failed == 2, "the first two POSTs failed and were retried"
        ids = [e["sg_event_id"] for e in events]
        assert len(ids) == len(set(ids)) == 4, events
        assert sorted(e["event"] for e in events) == ["bounce", "delivered", "processed", "processed"]
        assert {e["email"] for e in events} == {"ok@example.net", "reject-x@example.net"}

        bounce = next(e for e in events if e["event"] == "bounce")
        assert bounce["type"] == "bounce"
        assert bounce["status"] == "5.1.1"
        assert bounce["bounce_classification"] == "Invalid Address"
        assert "550" in bounce["reason"]
        delivered = next(e for e in events if e["event"] == "delivered")
        assert "250" in delivered["response"] and delivered["tls"] == 0
        assert isinstance(delivered["timestamp"], int)
        assert delivered["sg_message_id"] == bounce["sg_message_id"]

        # Every request verifies with SendGrid's own verifier, and only as sent.
        verifier = EventWebhook()
        key = verifier.convert_public_key_to_ecdsa(public_key)
        for headers, body in receiver.requests:
            sig = headers[EventWebhookHeader.SIGNATURE]
            ts = headers[EventWebhookHeader.TIMESTAMP]
            assert verifier.verify_signature(body, sig, ts, key)
            assert not verifier.verify_signature(body.replace("bounce", "delivered").replace("processed", "dropped"), sig, ts, key)
            assert not verifier.verify_signature(body, sig, str(int(ts) + 1), key)

        shown = json.loads(p.cli("webhook", "show", "admin", "--json").stdout)
        assert shown["public_key"] == public_key
        assert shown["last_success"] is not None
        assert "HTTP 500" in shown["last_error"]

        # The test route posts samples to a URL, signed.
        before = len(receiver.requests)
        r = sg.client.user.webhooks.event.test.post(request_body={"url": receiver.url})
        assert r.status_code == 204
        headers, body = receiver.requests[before]
        assert {e["event"] for e in json.loads(body)} == {"processed", "delivered", "deferred", "bounce", "dropped"}
        assert verifier.verify_signature(body, headers[EventWebhookHeader.SIGNATURE], headers[EventWebhookHeader.TIMESTAMP], key)
    finally:
        receiver.stop()


def test_a_restart_resumes_where_delivery_stopped(hooked, sink):
    p = hooked
    receiver = Receiver()
    p.cli("webhook", "set", "admin", "--url", receiver.url, "--events", "delivered")
    send(p, p.admin_key, ["one@example.net"])
    receiver.wait_events(1)
    receiver.stop()
    p.stop()
    # Delivered while the receiver is gone: kept in the log, sent later.
    p.start()
    send(p, p.admin_key, ["two@example.net"])
    sink.wait_for(2)
    # The dispatcher tried the gone receiver with the new event and failed:
    # the event is still owed.
    wait_until(lambda: webhook_state(p)["last_error"], timeout=15, what="a failed POST to the stopped receiver")
    receiver2 = Receiver()
    try:
        p.cli("webhook", "set", "admin", "--url", receiver2.url)
        receiver2.wait_events(1)
        wait_until(lambda: caught_up(p), timeout=10, what="the webhook cursor at the end of the log")
        events = receiver2.events()
        # Exactly the event not yet taken: nothing lost, nothing replayed.
        assert [e["email"] for e in events] == ["two@example.net"], events
    finally:
        receiver2.stop()


def test_default_configuration_refuses_internal_and_plain_http_urls(postern):
    sg = api(postern)
    from python_http_client.exceptions import BadRequestsError

    for url, words in [
        ("http://hooks.example.com/x", "https"),
        ("https://127.0.0.1:9/x", "internal"),
        ("https://[::1]:9/x", "internal"),
        ("https://localhost:9/x", "internal"),
        ("https://169.254.169.254/latest", "internal"),
    ]:
        with pytest.raises(BadRequestsError) as e:
            sg.client.user.webhooks.event.settings.patch(request_body={"enabled": True, "url": url, "delivered": True})
        assert words in e.value.body.decode(), (url, e.value.body)
        with pytest.raises(BadRequestsError):
            sg.client.user.webhooks.event.test.post(request_body={"url": url})
    got = json.loads(sg.client.user.webhooks.event.settings.get().body)
    assert got["enabled"] is False and got["url"] == ""
