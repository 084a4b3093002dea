"""What `postern serve` does on its first start (README, "What `postern
serve` does on first start"): a self-signed certificate for the loopback
names and addresses, and a one-time admin key that a later start never
prints again; and, without `--config`, the data directory it names and
the default ports, bound in a network namespace of the test's own."""

import ipaddress
import json
import smtplib
import ssl
import tempfile
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from conftest import DefaultPostern, Postern, auth_plain, ehlo_extensions, in_own_network


def test_the_certificate_names_localhost_and_both_loopback_addresses(postern):
    cert = x509.load_pem_x509_certificate(open(postern.cert, "rb").read())
    assert cert.issuer == cert.subject, "self-signed"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # server.hostname (postern.test in this harness) comes first; the
    # loopback names and addresses are what the README promises.
    assert set(sans.get_values_for_type(x509.DNSName)) == {"postern.test", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}


def test_the_admin_key_is_printed_only_at_the_first_start(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port).start()
        try:
            key = p.read_admin_key()
            assert key.startswith("pst_")
            assert auth_plain(p, "apikey", key)[0] == 235
        finally:
            p.stop()
        # The key is printed before the listeners are bound, so once
        # start() has seen them open, anything a second start would print
        # is already on its stdout; after the stop that stream is complete.
        p.start()
        try:
            assert auth_plain(p, "apikey", key)[0] == 235, "the first key still works"
        finally:
            p.stop()
        printed = p.proc.stdout.read()
        assert "pst_" not in printed, printed


def listening_tcp():
    """The TCP sockets listening in the calling thread's network namespace,
    as (address, port), read from the kernel's tables (/proc/net/tcp and
    tcp6; `thread-self` because the namespace is the thread's)."""
    found = set()
    for table, family_len in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/thread-self/net/{table}") as f:
            next(f)  # the header line
            for line in f:
                local, state = line.split()[1], line.split()[3]
                if state != "0A":  # TCP_LISTEN
                    continue
                hex_addr, hex_port = local.split(":")
                assert len(hex_addr) == family_len
                # Each 32-bit word is in host (little-endian) order.
                raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, family_len, 8))
                found.add((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return found


def check_first_start(workdir, data_dir):
    """Starts `postern serve` without `--config` in `workdir` (with
    `--data-dir data_dir` unless None) and checks each statement of the
    README's "What `postern serve` does on first start" against it. Runs
    inside the test's own network namespace."""
    p = DefaultPostern(workdir, data_dir)
    expected_dir = Path(data_dir) if data_dir is not None else Path(workdir) / "postern-data"
    assert not expected_dir.exists()
    p.start()
    try:
        # "prints a one-time admin API key (`pst_…`)"
        key = p.read_admin_key()
        assert key.startswith("pst_")

        # "uses ./postern-data (or --data-dir DIR)": the store and the
        # certificate are there, and nothing is made in the working
        # directory when another directory was named.
        assert (expected_dir / "postern.db").is_file()
        assert (expected_dir / "tls" / "cert.pem").is_file()
        assert (expected_dir / "tls" / "key.pem").is_file()
        if data_dir is not None:
            assert not (Path(workdir) / "postern-data").exists()

        # "a self-signed certificate ... for localhost, 127.0.0.1, ::1"
        # (server.hostname defaults to localhost, so nothing else).
        cert = x509.load_pem_x509_certificate((expected_dir / "tls" / "cert.pem").read_bytes())
        assert cert.issuer == cert.subject, "self-signed"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost"}
        assert set(sans.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}

        # "listens on loopback": exactly these four sockets, all on
        # 127.0.0.1 (nothing else runs in this namespace).
        assert listening_tcp() == {("127.0.0.1", port) for port in (2587, 2465, 2025, 8025)}

        # The certificate clients are to trust is the one generated, for
        # the address they connect to (RFC 6125: the IP SAN).
        ctx = ssl.create_default_context(cafile=str(expected_dir / "tls" / "cert.pem"))

        # Submission with STARTTLS on 2587: a banner in clear, STARTTLS
        # offered and no AUTH before TLS (RFC 3207 §4, RFC 8314 §3.3: no
        # credentials in clear), AUTH after it, and the printed key works.
        with smtplib.SMTP("127.0.0.1", 2587, timeout=30) as s:
            code, _ = s.ehlo()
            assert code == 250
            before = ehlo_extensions(s)
            assert "starttls" in before and "auth" not in before, before
            s.starttls(context=ctx)
            s.ehlo()
            assert "auth" in ehlo_extensions(s)
            assert s.login("apikey", key)[0] == 235

        # Implicit TLS on 2465 (RFC 8314 §3): TLS from the first byte,
        # then the banner; AUTH offered, STARTTLS not.
        with smtplib.SMTP_SSL("127.0.0.1", 2465, timeout=30, context=ctx) as s:
            s.ehlo()
            ext = ehlo_extensions(s)
            assert "auth" in ext and "starttls" not in ext, ext

        # Inbound MX on 2025: SMTP in clear (RFC 5321 §4.2: a 220
        # greeting), and no AUTH offered, even after STARTTLS, which is
        # what tells it from submission.
        with smtplib.SMTP("127.0.0.1", 2025, timeout=30) as s:
            code, _ = s.ehlo()
            assert code == 250
            assert "auth" not in ehlo_extensions(s)
            if s.has_extn("starttls"):
                s.starttls(context=ctx)
                s.ehlo()
                assert "auth" not in ehlo_extensions(s)

        # HTTP (`/metrics`, `/healthz`) on 8025.
        with urllib.request.urlopen("http://127.0.0.1:8025/healthz", timeout=10) as r:
            assert r.status == 200 and r.read().startswith(b"ok\n")
        with urllib.request.urlopen("http://127.0.0.1:8025/metrics", timeout=10) as r:
            assert r.status == 200 and b"postern_" in r.read()

        # "Every command works on the same data directory as the server":
        # the CLI, given no --config either (and the same --data-dir),
        # finds the first-start key there.
        keys = json.loads(p.cli("key", "list", "--json").stdout)
        assert [k["name"] for k in keys] == ["first-start admin key"], keys
    finally:
        p.stop()


@pytest.mark.parametrize("where", ["default", "data-dir"])
def test_without_a_config_the_data_directory_and_default_ports_are_used(where):
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d) / "cwd"
        workdir.mkdir()
        data_dir = None if where == "default" else Path(d) / "chosen" / "data"
        in_own_network(lambda: check_first_start(workdir, data_dir))
