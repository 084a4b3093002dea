"""TLS on the submission listener as Python's ssl module (OpenSSL) meets
it: TLS 1.3 and TLS 1.2 clients both get a session, and each session is
counted under its protocol version and the key exchange group agreed
(`postern_smtp_tls_sessions_total{version,group}`, README "Security
defaults")."""

import re
import smtplib
import ssl
import urllib.request

from conftest import wait_until

SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def tls_sessions(p):
    """{(version, group): count} from postern_smtp_tls_sessions_total."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{p.ports['http']}/metrics", timeout=10).read().decode()
    counts = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == "postern_smtp_tls_sessions_total":
            labels = dict(LABEL.findall(m.group(2)))
            counts[(labels.get("version"), labels.get("group"))] = float(m.group(3))
    return counts


def test_tls_sessions_are_counted_by_version_and_group(postern):
    for version, name in [(ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")]:
        ctx = ssl.create_default_context(cafile=postern.cert)
        ctx.minimum_version = ctx.maximum_version = version
        with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
            s.starttls(context=ctx)
            assert s.sock.version() == name
            assert s.ehlo()[0] == 250
    # OpenSSL 3.0 offers no hybrid post-quantum group and lists X25519
    # first, so X25519 is the server's choice for both sessions. The
    # counter is incremented as the handshake ends; polled for.
    counts = wait_until(
        lambda: (c := tls_sessions(postern))
        and c.get(("TLSv1.3", "X25519")) == 1 and c.get(("TLSv1.2", "X25519")) == 1 and c,
        timeout=10, what="both sessions counted")
    assert sum(counts.values()) == 2, counts
