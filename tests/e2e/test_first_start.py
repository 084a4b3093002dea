"""What `postern serve` does on its first start (README, "What `postern
serve` does on first start"): a self-signed certificate for the loopback
names and addresses, and a one-time admin key that a later start never
prints again."""

import ipaddress
import tempfile

from cryptography import x509

from conftest import Postern, auth_plain


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
