"""No backscatter from the mx listener. With the default recipient check
(call-ahead to the relay domain's next hop), a recipient the internal
server does not know is refused at RCPT, before any message exists to
bounce. Where recipients are not checked, a bounce for mail that came in
without authentication carries the headers only (whatever RET asked) and
is rate-limited per address, so a forged sender cannot be flooded."""

import json
import smtplib
import tempfile
import time
from collections import Counter

import pytest

from conftest import Postern, Sink, certificate, free_port, wait_until


def test_unknown_relay_recipients_are_refused_at_rcpt(postern, sink):
    with smtplib.SMTP("127.0.0.1", postern.ports["mx"], timeout=30) as s:
        s.ehlo("mx.example.net")
        s.mail("spammer-claims@victim.example")
        code, text = s.rcpt("reject-nobody@relay.test")
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        code, _ = s.rcpt("alice@relay.test")
        assert code == 250
        code, _ = s.data(b"Subject: hi\r\n\r\nhello\r\n")
        assert code == 250
    got = sink.wait_for(1)
    assert got[0]["rcpt_tos"] == ["alice@relay.test"]
    # Nothing was queued for the unknown recipient, so nothing can bounce:
    # a queued recipient gets its "processed" event before the 250 to DATA,
    # and once alice's delivery is logged the message is settled, so the
    # log is final - alice's events and no others.
    events = wait_until(
        lambda: (ev := json.loads(postern.cli("events", "--json").stdout))
        and "delivered" in {e["event"] for e in ev} and ev,
        timeout=10, what="alice's delivered event")
    # The refusal is a `refused` event of its own (no message exists), with
    # the client, HELO, sender and the reply the client got.
    assert {(e["event"], e["recipient"]) for e in events} == {
        ("refused", "reject-nobody@relay.test"),
        ("processed", "alice@relay.test"), ("delivered", "alice@relay.test")}, events
    refused = next(e for e in events if e["event"] == "refused")
    assert refused["detail"] == ("client=127.0.0.1 helo=mx.example.net from=<spammer-claims@victim.example> "
                                 "550 5.1.1 No such recipient here"), refused
    assert refused["account"] is None
    assert refused["message_id"] not in {e["message_id"] for e in events if e["event"] != "refused"}


@pytest.fixture
def unchecked(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, relay_config='recipient_check = "any"\ndsn_per_address_per_hour = 2\n')
        p.start()
        p.read_admin_key()
        yield p
        p.stop()


def test_bounces_of_unauthenticated_mail_are_headers_only_and_rate_limited(unchecked, sink):
    p = unchecked
    for i in range(6):
        with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
            s.ehlo("mx.example.net")
            s.mail("forged@victim.example", ["RET=FULL"])
            assert s.rcpt(f"reject-{i}@relay.test")[0] == 250
            assert s.data(b"Subject: spam\r\n\r\nSECRET-BODY-TEXT\r\n")[0] == 250
    bounces = wait_until(
        lambda: (b := json.loads(p.cli("events", "--kind", "bounce", "--json").stdout)) and len(b) >= 6 and b,
        timeout=30, what="6 bounce events")
    assert len(bounces) == 6, bounces
    # A DSN is queued before its bounce is logged, and the log says which:
    # exactly 2 were queued, the other 4 refused by the per-address limit.
    queued = [e["detail"].split("; DSN queued as ")[1] for e in bounces if "; DSN queued as " in e["detail"]]
    limited = [e for e in bounces if "no DSN (rate limit" in e["detail"]]
    assert len(queued) == 2 and len(limited) == 4, bounces
    # Those two, once delivered, are all the forged sender gets.
    delivered = lambda: {e["message_id"] for e in json.loads(p.cli("events", "--kind", "delivered", "--json").stdout)}
    wait_until(lambda: set(queued) <= delivered(), timeout=30, what="the two DSNs delivered")
    dsns = [m for m in sink.messages if m["rcpt_tos"] == ["forged@victim.example"]]
    assert len(dsns) == 2, f"{len(dsns)} DSNs to the forged sender; the limit is 2"
    for m in dsns:
        assert b"SECRET-BODY-TEXT" not in m["data"], "an unauthenticated message's body was sent back"
        assert b"Subject: spam" in m["data"], "the headers are returned"
    limited = [e for e in bounces if "rate limit" in e.get("detail", json.dumps(e))]
    assert len(limited) == 4, bounces


def rcpts_asked(sink):
    """Every RCPT the sink is asked (the call-aheads among them), as
    (address, over TLS, authenticated user or None), in a list it returns
    and keeps filling."""
    asked = []
    answer = sink.handler.handle_RCPT

    async def recording(server, session, envelope, address, rcpt_options):
        asked.append((address, session.ssl is not None, session.auth_data if session.authenticated else None))
        return await answer(server, session, envelope, address, rcpt_options)

    sink.handler.handle_RCPT = recording
    return asked


def times_asked(asked, address):
    return sum(1 for a in asked if a[0] == address)


def rcpt_on_mx(p, address):
    """One RCPT to the mx listener in a session of its own (refusals
    within one session slow it down), and its reply."""
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
        s.ehlo("mx.example.net")
        s.mail("someone@example.com")
        return s.rcpt(address)


def test_callahead_answers_are_cached(postern, sink):
    """A yes is kept for relay.callahead_cache (1 h by default) and a no
    for a tenth of it: asking again within that time asks the next hop
    nothing. No message is sent, so every RCPT the sink sees is a
    call-ahead."""
    asked = rcpts_asked(sink)
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", postern.ports["mx"], timeout=30) as s:
            s.ehlo("mx.example.net")
            s.mail("someone@example.com")
            assert s.rcpt("alice@relay.test")[0] == 250
            code, text = s.rcpt("reject-bob@relay.test")
            assert code == 550 and text.startswith(b"5.1.1"), (code, text)
            s.rset()
    assert Counter(a[0] for a in asked) == {"alice@relay.test": 1, "reject-bob@relay.test": 1}, asked


def test_a_no_is_cached_for_a_tenth_of_callahead_cache_and_no_longer(sink):
    """README: "a yes is cached for relay.callahead_cache, a no for a
    tenth of it". With 30 s, a refusal is answered from the cache for 3 s
    and the next hop is asked again right after (not after 30 s), while
    the yes is still cached."""
    cache, tenth = 30.0, 3.0
    bob = "reject-bob@relay.test"
    asked = rcpts_asked(sink)
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, relay_config=f'callahead_cache = "{int(cache)}s"').start()
        try:
            p.read_admin_key()
            assert rcpt_on_mx(p, "alice@relay.test")[0] == 250
            # The server caches the no after this moment and before the
            # reply arrives: it expires between sent + tenth and
            # answered + tenth.
            sent = time.monotonic()
            code, text = rcpt_on_mx(p, bob)
            answered = time.monotonic()
            assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
            assert times_asked(asked, bob) == 1, asked

            code, text = rcpt_on_mx(p, bob)
            assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
            assert time.monotonic() - sent < tenth, "too slow to ask within the tenth"
            assert times_asked(asked, bob) == 1, "a no is cached"

            def asked_again():
                began = time.monotonic()
                code, _ = rcpt_on_mx(p, bob)
                assert code == 550, code
                return times_asked(asked, bob) == 2 and (began, time.monotonic())

            began, ended = wait_until(asked_again, timeout=cache / 2, what="a second call-ahead for the refused address")
            # Not before the tenth had passed...
            assert ended - sent >= tenth, f"asked again after {ended - sent:.2f} s"
            # ...and right after it: the RCPT before this one was still
            # cached, so this one began at most a poll (50 ms) and a
            # session after the expiry; 2 s of slack is far less than the
            # 27 s more a no cached for the whole callahead_cache would take.
            assert began - answered < tenth + 2, f"asked again only after {began - answered:.2f} s"
            # The yes is still cached: alice was asked once.
            assert rcpt_on_mx(p, "alice@relay.test")[0] == 250
            assert times_asked(asked, "alice@relay.test") == 1, asked
        finally:
            p.stop()


def test_callahead_uses_the_routes_tls_and_credentials(tmp_path):
    """README: the call-ahead goes to the relay domain's route "with the
    route's TLS policy and credentials". The next hop takes nothing before
    STARTTLS and no MAIL before AUTH with the route's user and password,
    and its certificate is trusted only through the route's ca_file."""
    ca = certificate(tmp_path, "callahead-ca", ca=True)
    leaf = certificate(tmp_path, "callahead-hop", ips=["127.0.0.1"], issuer=ca)
    secure = Sink(tls=leaf, auth=("relay-user", "relay-secret"))
    asked = rcpts_asked(secure)

    def route(tls, password):
        return f"""
[[route]]
domain = "relay.test"
next_hop = "127.0.0.1:{secure.port}"
tls = "{tls}"
ca_file = "{ca['cert']}"
auth_username = "relay-user"
auth_password = "{password}"
"""

    try:
        # The "*" route goes to a port nothing listens on: only the
        # relay.test route can answer.
        (tmp_path / "right").mkdir()
        p = Postern(tmp_path / "right", free_port(), extra_config=route("required", "relay-secret")).start()
        try:
            p.read_admin_key()
            assert rcpt_on_mx(p, "alice@relay.test")[0] == 250
            code, text = rcpt_on_mx(p, "reject-bob@relay.test")
            assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
        finally:
            p.stop()
        assert asked == [("alice@relay.test", True, "relay-user"), ("reject-bob@relay.test", True, "relay-user")], asked

        # The same next hop behind a route with another password: it gives
        # no answer, so the recipient is deferred (RFC 3463 4.4.3), never
        # accepted or refused on a guess.
        (tmp_path / "wrong").mkdir()
        p = Postern(tmp_path / "wrong", free_port(), extra_config=route("required", "not-the-secret")).start()
        try:
            p.read_admin_key()
            code, text = rcpt_on_mx(p, "carol@relay.test")
            assert (code, text[:5]) == (451, b"4.4.3"), (code, text)
        finally:
            p.stop()
        assert [a[0] for a in asked].count("carol@relay.test") == 0, asked
    finally:
        secure.stop()


def test_an_unreachable_next_hop_gets_451(sink):
    """When the relay domain's next hop cannot be asked, the recipient is
    deferred with 451 4.4.3 (RFC 3463: directory server failure), never
    accepted unchecked nor refused."""
    # A next hop with nothing listening on its port.
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, free_port()).start()
        try:
            p.read_admin_key()
            with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
                s.ehlo("mx.example.net")
                s.mail("someone@example.com")
                code, text = s.rcpt("alice@relay.test")
                assert (code, text[:5]) == (451, b"4.4.3"), (code, text)
        finally:
            p.stop()
