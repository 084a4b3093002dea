"""README: DANE is in force only once the resolver path is seen to supply
DNSSEC data that validates (the SOA of the root, through the configured
resolver; "probed at start and every 10 minutes, not when a `"*"` route
leaves nothing to MX"); behind a resolver that drops DNSSEC data mail goes
out under the usual TLS policy "with a warning, `postern_dane_active 0`
and a `dane: inactive` line in `/healthz`".

Here the start and the "*" case, against a DNS server on loopback that
keeps every question; the 10-minute interval is held by
crates/postern-delivery/src/dnssec_probe.rs with a paused clock."""

import re
import tempfile
import time
import urllib.request

from conftest import DnsZone, Postern, wait_until


def root_questions(zone):
    """What the probe asks the path: the root's SOA, and the DNSKEYs
    (and DS records) a validator fetches to check it."""
    with zone.lock:
        return [q for q in zone.queries if q[0] == "."]


def test_the_path_is_probed_at_start_and_a_failure_is_warned_about(sink):
    zone = DnsZone()  # unsigned: NXDOMAIN for the root, no RRSIGs at all
    try:
        with tempfile.TemporaryDirectory() as d:
            # Only relay.test is routed: other domains go to MX, so DANE matters.
            p = Postern(d, sink.port, route_every_domain=False,
                        extra_config=f'[dns]\nnameservers = ["127.0.0.1:{zone.port}"]\n').start()
            try:
                p.read_admin_key()
                wait_until(lambda: (".", "SOA") in root_questions(zone), timeout=30,
                           what="the probe's SOA question for the root")
                log = wait_until(lambda: (t := p.log.read_text(errors="replace")) and "DANE inactive" in t and t,
                                 timeout=30, what="the warning that DANE is inactive")
                # At WARN level, saying why.
                assert re.search(r" WARN .*DANE inactive: the resolver path does not supply "
                                 r"DNSSEC data that validates.*reason=", log), log[-3000:]
                base = f"http://127.0.0.1:{p.ports['http']}"
                health = urllib.request.urlopen(base + "/healthz", timeout=10).read()
                assert b"dane: inactive" in health, health
                metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
                assert "postern_dane_active 0" in metrics, metrics[:3000]
                # One probe so far: the one at start (the next is 10 minutes away).
                assert 'postern_dane_probe_total{result="not_validated"} 1' in metrics, metrics[:3000]
            finally:
                p.stop()
    finally:
        zone.stop()


def test_no_probe_when_a_star_route_leaves_nothing_to_mx(sink):
    zone = DnsZone()
    try:
        with tempfile.TemporaryDirectory() as d:
            # The harness's "*" route sends every domain to the sink.
            p = Postern(d, sink.port, extra_config=f'[dns]\nnameservers = ["127.0.0.1:{zone.port}"]\n').start()
            try:
                p.read_admin_key()
                # Logged where the probe task would otherwise be started.
                wait_until(lambda: "DANE not probed" in p.log.read_text(errors="replace"),
                           timeout=30, what="the log line saying DANE is not probed")
                # When it is started, the probe asks at once: with the
                # route of the test above, its question has arrived by the
                # time start() returns (measured: before; start() waits
                # for the listeners). 3 s more is far beyond that.
                time.sleep(3)
                assert root_questions(zone) == [], root_questions(zone)
                log = p.log.read_text(errors="replace")
                assert "DANE inactive" not in log and "DANE active" not in log, log[-3000:]
                base = f"http://127.0.0.1:{p.ports['http']}"
                health = urllib.request.urlopen(base + "/healthz", timeout=10).read()
                assert b"dane: not used" in health, health
                metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
                assert "postern_dane_probe_total{" not in metrics, metrics[:3000]
            finally:
                p.stop()
    finally:
        zone.stop()
