"""The command line works against the data directory of a running server."""

import json
import smtplib
import ssl
import subprocess
from pathlib import Path

from conftest import BIN, wait_for_clock, wait_until


def login(postern, key):
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=20) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        try:
            s.login("apikey", key)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def test_key_create_and_revoke_take_effect_at_once(postern):
    created = json.loads(postern.cli("key", "create", "--name", "ci", "--scopes", "mail.send", "--json").stdout)
    assert created["key"].startswith("pst_") and created["id"]
    assert created["scopes"] == ["mail.send"]
    assert login(postern, created["key"])
    postern.cli("key", "revoke", created["id"])
    assert not login(postern, created["key"])
    listed = json.loads(postern.cli("key", "list", "--json").stdout)
    mine = [k for k in listed if k["id"] == created["id"]][0]
    assert mine["revoked_at"] is not None
    assert "key" not in mine, "secrets are never listed"
    # Revoking twice is an error that says so.
    again = postern.cli("key", "revoke", created["id"], check=False)
    assert again.returncode != 0 and "no active key" in again.stderr


def test_key_without_mail_send_cannot_send(postern):
    created = json.loads(postern.cli("key", "create", "--scopes", "api_keys.read", "--json").stdout)
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=20) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        s.login("apikey", created["key"])
        code, msg = s.mail("sender@example.org")
        assert code == 550 and b"mail.send" in msg


def test_check_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nmax_recipientz = 5\n')
    out = subprocess.run([str(BIN), "check-config", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "max_recipientz" in out.stderr
    bad.write_text('[[route]]\ndomain = "example.net"\nnext_hop = "no-port"\n')
    out = subprocess.run([str(BIN), "check-config", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "route[0].next_hop" in out.stderr, out.stderr
    example = Path(__file__).resolve().parents[2] / "postern.example.toml"
    out = subprocess.run([str(BIN), "check-config", "--config", str(example)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_check_config_probes_dane_on_the_configured_resolver(tmp_path):
    """Through a resolver that serves no DNSSEC data (an unsigned server on
    loopback), DANE would be inactive, and `--probe-dns` says so."""
    from dnslib.server import BaseResolver, DNSServer
    from conftest import free_port

    class Unsigned(BaseResolver):
        def resolve(self, request, handler):
            return request.reply()

    port = free_port()
    server = DNSServer(Unsigned(), port=port, address="127.0.0.1")
    server.start_thread()
    try:
        cfg = tmp_path / "p.toml"
        cfg.write_text(f'[dns]\nnameservers = ["127.0.0.1:{port}"]\n')
        out = subprocess.run([str(BIN), "check-config", "--config", str(cfg), "--probe-dns"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "DANE: would be inactive" in out.stdout, out.stdout
        cfg.write_text(f'[dns]\nnameservers = ["127.0.0.1:{port}"]\ndane_required = true\n')
        out = subprocess.run([str(BIN), "check-config", "--config", str(cfg), "--probe-dns"],
                             capture_output=True, text=True, timeout=60)
        assert "MX mail would be deferred" in out.stdout, out.stdout
    finally:
        server.stop()


def test_version_and_help():
    out = subprocess.run([str(BIN), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("postern ")
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True)
    assert "serve" in out.stdout and "check-config" in out.stdout


def test_metrics_and_health(postern):
    import urllib.request
    base = f"http://127.0.0.1:{postern.ports['http']}"
    health = urllib.request.urlopen(base + "/healthz", timeout=10).read()
    assert health.startswith(b"ok\n"), health
    # The harness routes every domain to the sink: no MX, so no DANE probe
    # (and no DNS traffic for one).
    assert b"dane: not used" in health, health
    login(postern, postern.admin_key)
    text = wait_until(
        lambda: (t := urllib.request.urlopen(base + "/metrics", timeout=10).read().decode())
        and 'postern_auth_attempts_total{outcome="success"} 1' in t and t,
        timeout=10, what="the AUTH counted in /metrics")
    assert "postern_dane_active 0" in text, text[:2000]


def test_delivery_metrics(postern, sink):
    import smtplib, ssl, urllib.request
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=postern.cert))
        s.login("apikey", postern.admin_key)
        s.sendmail("a@example.org", ["ok@example.net", "reject-m@example.net"], b"Subject: m\r\n\r\nx\r\n")
    sink.wait_for(1)
    base = f"http://127.0.0.1:{postern.ports['http']}"
    text = wait_until(
        lambda: (t := urllib.request.urlopen(base + "/metrics", timeout=10).read().decode())
        and 'postern_bounces_total{class="invalid_address",severity="hard"}' in t and "postern_queue_messages" in t
        and 'postern_delivery_outcomes_total{outcome="delivered",tls="plaintext"} 2' in t and t,
        timeout=30, what="the bounce, queue and two delivery metrics")
    def value(name):
        line = next((l for l in text.splitlines() if l.startswith(name + " ")), None)
        assert line is not None, (name, text)
        return float(line.split()[-1])

    # The message and the DSN about its bounced recipient were delivered.
    assert value('postern_delivery_outcomes_total{outcome="delivered",tls="plaintext"}') == 2
    assert value('postern_delivery_outcomes_total{outcome="bounce",tls="plaintext"}') == 1
    assert value('postern_bounces_total{class="invalid_address",severity="hard"}') == 1
    # Durations are real histograms, with buckets.
    assert 'postern_delivery_attempt_seconds_bucket{le="0.005"}' in text
    assert value("postern_delivery_latency_seconds_count") == 2
    assert "postern_queue_oldest_age_seconds" in text and "postern_queue_messages" in text


def test_an_expired_key_is_refused(postern):
    created = json.loads(postern.cli("key", "create", "--expires-in", "2s", "--json").stdout)
    assert created["expires_at"] is not None
    assert login(postern, created["key"])
    wait_for_clock(created["expires_at"])
    assert not login(postern, created["key"])
