"""URI block lists (`[[content.uribl]]`, SURBL/URIBL style) on the mx
listener: the URLs of a message's text and HTML parts are reduced to
their registrable domains and looked up as `<domain>.<zone>` in zones a
dnslib server on loopback serves. smtplib is the sending MTA, the sink
the internal server behind Postern."""

import base64
import json
import tempfile
import time
from contextlib import contextmanager

import pytest

from conftest import DnsZone, Postern, metric, quarantined, send_mx

ZONE = "uribl.test"
MULTI = "multi.surbl.test"


@pytest.fixture
def zone():
    z = DnsZone()
    yield z
    z.stop()


@contextmanager
def gateway(sink, zone, content=""):
    """A Postern whose mx listener checks URLs against `uribl.test` (any
    127/8 answer) and `multi.surbl.test` (bit 8 of the answer), asking the
    DNS server `zone`; more `[content]` keys in `content`."""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(
            d, sink.port,
            relay_domains=("relay.test", "soft.test"),
            relay_config='recipient_check = "any"',
            extra_config=f"""
[dns]
nameservers = ["127.0.0.1:{zone.port}"]

[content]
uribl_lookup_timeout = "500ms"
{content}

[[content.uribl]]
zone = "{ZONE}"

[[content.uribl]]
zone = "{MULTI}"
mask = 8

[[content.domain]]
domain = "soft.test"
uri_listed = "quarantine"
""",
        ).start()
        p.read_admin_key()
        try:
            yield p
        finally:
            p.stop()


def plain(body, extra_headers=""):
    return (
        "From: sender@sender.test\r\nTo: user@relay.test\r\nSubject: offer\r\n"
        f"{extra_headers}\r\n{body}\r\n"
    ).encode()


def html_only_in_base64(html):
    """multipart/alternative: a text/plain part without any URL and a
    base64-encoded text/html part."""
    encoded = base64.encodebytes(html.encode()).decode().replace("\n", "\r\n")
    return (
        "From: sender@sender.test\r\nTo: user@relay.test\r\nSubject: offer\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the HTML version.\r\n"
        "--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{encoded}--b--\r\n"
    ).encode()


def test_a_listed_url_domain_is_refused_with_the_zone_named(zone, sink):
    zone.set(f"listed.test.{ZONE}", "127.0.0.2")
    with gateway(sink, zone) as p:
        code, text = send_mx(p, plain("Cheap: http://www.shop.listed.test/buy?id=1 now"))
        assert (code, text) == (550, "5.7.1 URL domain listed.test listed by uribl.test")
        # The registrable domain was asked, not the host.
        assert zone.asked(f"listed.test.{ZONE}") == 1
        assert zone.asked(f"www.shop.listed.test.{ZONE}") == 0

        # Only in the HTML part, base64-encoded, as an href: found all the
        # same (the text part names no URL). A new name, so no cache.
        zone.set(f"html-listed.test.{ZONE}", "127.0.0.2")
        code, text = send_mx(p, html_only_in_base64(
            '<p>Your parcel: <a href="https://track.html-listed.test/p?x=1">track it</a></p>'))
        assert (code, text) == (550, "5.7.1 URL domain html-listed.test listed by uribl.test")
        assert zone.asked(f"html-listed.test.{ZONE}") == 1

        # SURBL's multi list: a bit of the answer is the list; bit 8 is
        # the one configured, so 127.0.0.8 lists and 127.0.0.16 does not.
        zone.set(f"phish.test.{MULTI}", "127.0.0.8")
        zone.set(f"other-bit.test.{MULTI}", "127.0.0.16")
        code, text = send_mx(p, plain("http://phish.test/login"))
        assert (code, text) == (550, "5.7.1 URL domain phish.test listed by multi.surbl.test")

        # Nothing was queued; each refusal is counted with its zone, and
        # recorded: processed with the check's finding, then dropped.
        assert json.loads(p.cli("queue", "list", "--json").stdout) == []
        assert metric(p, "postern_uribl_listed_total", zone=ZONE) == 2
        assert metric(p, "postern_uribl_listed_total", zone=MULTI) == 1
        assert metric(p, "postern_content_findings_total", check="uri", outcome="reject") == 3
        events = json.loads(p.cli("events", "--json").stdout)
        dropped = [e for e in events if e["event"] == "dropped"]
        assert len(dropped) == 3, events
        assert "URL domain phish.test listed by multi.surbl.test" in dropped[-1]["detail"], dropped
        processed = [e for e in events if e["event"] == "processed" and e["message_id"] == dropped[-1]["message_id"]]
        assert len(processed) == 1, events
        assert "content: uri=reject(URL domain phish.test listed by multi.surbl.test)" in processed[0]["detail"], processed

        # Not listed (the other bit): delivered.
        code, _ = send_mx(p, plain("http://other-bit.test/"))
        assert code == 250
        sink.wait_for(1)


def test_unlisted_urls_pass_and_the_answers_are_cached(zone, sink):
    zone.set(f"listed.test.{ZONE}", "127.0.0.2")
    with gateway(sink, zone) as p:
        body = plain("Minutes: https://docs.unlisted.test/m and www.also-fine.test, "
                     "mail listed.test's owner at someone@listed.test (an address, not a URL).")
        code, text = send_mx(p, body)
        assert code == 250, text
        [m] = sink.wait_for(1)
        # Delivered as sent, behind Postern's Received field.
        assert m["data"].endswith(body)
        assert b"X-Postern-Content" not in m["data"]
        # Both domains were looked up in both zones; the address was not.
        for domain in ("unlisted.test", "also-fine.test"):
            assert zone.asked(f"{domain}.{ZONE}") == 1
            assert zone.asked(f"{domain}.{MULTI}") == 1
        assert zone.asked(f"listed.test.{ZONE}") == 0

        # The same domains again: answered from the cache (the zone's TTL
        # is 0; Postern keeps "not listed" for uribl_negative_cache_ttl).
        code, _ = send_mx(p, body)
        assert code == 250
        sink.wait_for(2)
        assert zone.asked(f"unlisted.test.{ZONE}") == 1
        assert metric(p, "postern_uribl_lookups_total", result="cached") == 4


def test_at_most_max_domains_are_looked_up_per_message(zone, sink):
    """uribl_max_domains (20 by default): a message linking to 25
    domains has its first 20 looked up, the last ones not, even one that
    is listed."""
    zone.set(f"d24.test.{ZONE}", "127.0.0.2")
    with gateway(sink, zone) as p:
        links = " ".join(f"http://www.d{i}.test/" for i in range(25))
        code, text = send_mx(p, plain(links))
        assert code == 250, text
        sink.wait_for(1)
        assert [zone.asked(f"d{i}.test.{ZONE}") for i in range(25)] == [1] * 20 + [0] * 5
        assert metric(p, "postern_uribl_domains_capped_total") == 1


def test_a_relay_domain_can_quarantine_instead(zone, sink):
    zone.set(f"listed.test.{ZONE}", "127.0.0.2")
    with gateway(sink, zone) as p:
        code, text = send_mx(p, plain("http://listed.test/"), rcpts=("user@soft.test",))
        assert code == 250, text
        [held] = quarantined(p)
        assert held["reason"].startswith("URL domain listed.test listed by uribl.test"), held
        assert [r["email"] for r in held["recipients"]] == ["user@soft.test"]
        # A message for both domains gets the stricter action: refused.
        code, text = send_mx(p, plain("http://listed.test/"), rcpts=("user@soft.test", "user@relay.test"))
        assert (code, text) == (550, "5.7.1 URL domain listed.test listed by uribl.test")


def test_a_silent_name_server_defers_within_the_time_limit(zone, sink):
    with gateway(sink, zone) as p:
        zone.mute = True
        started = time.monotonic()
        code, text = send_mx(p, plain("http://slow.test/"))
        took = time.monotonic() - started
        assert code == 451, text
        assert text.startswith("4.3.0 Message not checked (uri: URI list lookup of slow.test."), text
        assert "timed out after 500 ms" in text
        # Both zones asked side by side: one time limit, not two (and far
        # below smtplib's 60 s).
        assert took < 5, took
        assert metric(p, "postern_uribl_lookups_total", result="timeout") == 2
        # Deferred: nothing queued, nothing recorded.
        assert json.loads(p.cli("queue", "list", "--json").stdout) == []
        zone.mute = False
        # A timeout is not cached: once the server answers, the message
        # goes through.
        code, _ = send_mx(p, plain("http://slow.test/"))
        assert code == 250
        sink.wait_for(1)
