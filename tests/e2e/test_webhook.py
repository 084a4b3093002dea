"""Event webhooks as a SendGrid user sets and receives them: settings and
the signing key through the `sendgrid` library, events POSTed as a JSON
array, signatures checked with the library's own EventWebhook verifier,
retries after a failing receiver without losing or repeating events, the
SSRF guard on the default configuration and at connect time (a DNS answer
that turns inward after the URL was set), and real HTTPS to a private CA
(`webhooks.ca_file`) with a certificate from any other CA refused."""

import json
import smtplib
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from conftest import DnsZone, Postern, certificate, free_port, server_context, wait_until


class Receiver:
    """An HTTP(S) webhook receiver. `tls`: a server SSLContext (https);
    `host`: the name URLs use for it. Every TCP connection it accepts is
    counted, whether or not a request follows. It answers in HTTP/1.0 and
    closes each connection, so every POST comes on a new connection (and so
    through a new address lookup)."""

    def __init__(self, fail_first=0, address="127.0.0.1", port=None, tls=None, host=None):
        self.requests = []  # (headers, body) of every POST answered 2xx
        self.failed = 0
        self.fail_first = fail_first
        self.connections = 0
        self.handshake_failures = []
        self.lock = threading.Lock()
        self.tls = tls
        self.host = host or address
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

        class Server(ThreadingHTTPServer):
            def get_request(self):
                sock, peer = self.socket.accept()
                with outer.lock:
                    outer.connections += 1
                return sock, peer

            def finish_request(self, request, client_address):
                if tls is None:
                    return super().finish_request(request, client_address)
                request.settimeout(10)
                try:
                    request = tls.wrap_socket(request, server_side=True)
                except OSError as e:
                    with outer.lock:
                        outer.handshake_failures.append(str(e))
                    return
                try:
                    super().finish_request(request, client_address)
                finally:
                    request.close()

        self.port = port or free_port()
        self.server = Server((address, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/events"

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
        # Batched: the two processed events are logged in one intake and
        # travel in one POST (batch_size 1 would make every POST carry one).
        sizes = [len(json.loads(body)) for _, body in receiver.requests]
        assert max(sizes) >= 2 and sum(sizes) == 4, sizes

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


def wait_webhook_error(p, account, timeout=30):
    """Polls `postern webhook show` until the account's webhook records a
    failed delivery; its text."""
    return wait_until(
        lambda: json.loads(p.cli("webhook", "show", account, "--json").stdout)["last_error"],
        timeout=timeout, what=f"a webhook failure recorded for {account}")


def verify_all(receiver, public_key):
    """Every POST the receiver took verifies with SendGrid's own verifier."""
    verifier = EventWebhook()
    key = verifier.convert_public_key_to_ecdsa(public_key)
    assert receiver.requests
    for headers, body in receiver.requests:
        assert verifier.verify_signature(body, headers[EventWebhookHeader.SIGNATURE], headers[EventWebhookHeader.TIMESTAMP], key)


def post_errors(p):
    """postern_webhook_posts_total{status="error"}: POSTs that got no HTTP answer."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{p.ports['http']}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("postern_webhook_posts_total{") and 'status="error"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def https_hooks(sink):
    """Postern with its stock SSRF rules (https only, no internal
    destinations) except for one named loopback address, 127.0.0.2, which
    stands for the operator's own receiver (tests reach only loopback);
    `webhooks.ca_file` trusts a private test CA, and receiver names
    resolve through a DNS server on loopback. Yields (postern, zone, dir, ca)."""
    zone = DnsZone()
    with tempfile.TemporaryDirectory() as d:
        ca = certificate(d, "webhook-test-ca", ca=True)
        config = f"""
[dns]
nameservers = ["127.0.0.1:{zone.port}"]

[webhooks]
flush_interval = "200ms"
retry_max = "1s"
allowed_internal_networks = ["127.0.0.2"]
ca_file = "{ca['cert']}"
"""
        p = Postern(d, sink.port, extra_config=config).start()
        try:
            p.read_admin_key()
            yield p, zone, d, ca
        finally:
            p.stop()
            zone.stop()


def test_events_go_over_https_to_a_private_ca_and_another_ca_is_refused(https_hooks):
    p, zone, d, ca = https_hooks
    zone.set("hooks.test", "127.0.0.2")
    trusted = certificate(d, "hooks-trusted", names=["hooks.test"], issuer=ca)
    rogue_ca = certificate(d, "rogue-ca", ca=True)
    rogue = certificate(d, "hooks-rogue", names=["hooks.test"], issuer=rogue_ca)
    good = Receiver(address="127.0.0.2", tls=server_context(trusted), host="hooks.test")
    bad = Receiver(address="127.0.0.2", tls=server_context(rogue), host="hooks.test")
    try:
        # The admin account's webhook points at the receiver with the
        # trusted CA's certificate, set and signed through the sendgrid
        # library as a user would.
        sg = api(p)
        sg.client.user.webhooks.event.settings.patch(request_body={"enabled": True, "url": good.url, "delivered": True})
        public_key = json.loads(sg.client.user.webhooks.event.settings.signed.patch(request_body={"enabled": True}).body)["public_key"]
        # Another account's points at the same name, port of a receiver whose
        # certificate (same name, valid dates) comes from a CA Postern does
        # not trust.
        p.cli("account", "create", "other")
        other = json.loads(p.cli("key", "create", "--account", "other", "--json").stdout)["key"]
        p.cli("webhook", "set", "other", "--url", bad.url, "--events", "delivered")
        errors_before = post_errors(p)

        send(p, p.admin_key, ["good@example.net"])
        send(p, other, ["rogue@example.net"])
        events = good.wait_events(1)
        assert [e["email"] for e in events] == ["good@example.net"], events
        assert [e["event"] for e in events] == ["delivered"], events
        verify_all(good, public_key)
        assert good.handshake_failures == []

        error = wait_webhook_error(p, "other")
        # rustls' wording for a chain that ends at a root it does not trust.
        assert "invalid peer certificate: UnknownIssuer" in error, error
        # Postern connected (so the address was allowed) and the handshake
        # is what failed: nothing was POSTed there.
        assert bad.connections >= 1
        assert bad.handshake_failures, "the receiver saw no failed handshake"
        assert bad.requests == []
        assert post_errors(p) >= errors_before + 1
        log = p.log.read_text()
        assert "webhook delivery failed" in log and "account=other" in log, log[-3000:]
    finally:
        good.stop()
        bad.stop()


def test_a_name_that_turns_inward_after_the_url_was_set_is_refused_at_connect(https_hooks):
    """DNS rebinding: the URL's name resolves to an allowed address when it
    is set, and to a forbidden one (127.0.0.3: loopback, not among
    `allowed_internal_networks`) when events go out. The check at set time
    cannot see that; the guard on every connection must."""
    p, zone, d, ca = https_hooks
    zone.set("hooks.test", "127.0.0.2")
    made = certificate(d, "hooks", names=["hooks.test"], issuer=ca)
    allowed = Receiver(address="127.0.0.2", tls=server_context(made), host="hooks.test")
    # Same port, the forbidden address, the same valid certificate: were the
    # guard gone, delivery there would succeed.
    inward = Receiver(address="127.0.0.3", port=allowed.port, tls=server_context(made), host="hooks.test")
    try:
        sg = api(p)
        r = sg.client.user.webhooks.event.settings.patch(request_body={"enabled": True, "url": allowed.url, "delivered": True})
        assert json.loads(r.body)["url"] == allowed.url
        send(p, p.admin_key, ["one@example.net"])
        assert [e["email"] for e in allowed.wait_events(1)] == ["one@example.net"]
        assert allowed.connections >= 1

        zone.set("hooks.test", "127.0.0.3")
        send(p, p.admin_key, ["two@example.net"])
        error = wait_webhook_error(p, "admin")
        assert "internal" in error and "127.0.0.3" in error, error
        # The refusal above is the attempt that would have gone to the
        # inward receiver; it is over, so any connection would be counted.
        assert inward.connections == 0
        assert inward.requests == []
        assert [e["email"] for e in allowed.events()] == ["one@example.net"]

        # The answer turns back: the held event arrives where it may, once.
        zone.set("hooks.test", "127.0.0.2")
        events = allowed.wait_events(2)
        assert [e["email"] for e in events] == ["one@example.net", "two@example.net"], events
        assert inward.connections == 0
    finally:
        allowed.stop()
        inward.stop()
