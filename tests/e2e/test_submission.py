"""Real clients nobody here wrote submit mail to the real binary; the sink
behind it receives it byte-exact (after Postern's own Received: header)."""

import json
import shutil
import smtplib
import ssl
import subprocess
import uuid

import pytest

from conftest import ehlo_extensions, strip_received


def message(subject):
    return (
        f"From: Sender <sender@example.org>\r\n"
        f"To: rcpt@example.net\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4()}@example.org>\r\n"
        f"\r\n"
        f"Hello from {subject}.\r\n"
        f".leading dot line\r\n"
        f"\r\n"
        f"Bye\r\n"
    ).encode()


def tls_context(postern):
    ctx = ssl.create_default_context(cafile=postern.cert)
    return ctx


def check_delivered(sink, body, mail_from, rcpts):
    """Recipients in different domains are delivered in separate
    transactions (one job per destination domain); together they must
    cover every recipient exactly once, each copy byte-exact."""
    domains = {r.split("@")[1] for r in rcpts}
    msgs = sink.wait_for(len(domains))
    got = [m for m in msgs if m["data"].endswith(body)]
    assert len(got) == len(domains), f"expected {len(domains)} copies at the sink: {msgs}"
    for m in got:
        received, rest = strip_received(m["data"])
        assert rest == body, "body changed in transit"
        assert b"by postern.test (Postern) with ESMTPSA id" in received, received
        assert m["mail_from"] == mail_from
    assert sorted(r for m in got for r in m["rcpt_tos"]) == sorted(rcpts)
    return received


# What every EHLO advertises, as smtplib reads it (keyword: parameters);
# SIZE is the default limits.max_message_size (25 MiB, RFC 1870).
BASE_EXTENSIONS = {
    "pipelining": "", "size": "26214400", "8bitmime": "", "smtputf8": "",
    "enhancedstatuscodes": "", "dsn": "", "chunking": "", "help": "",
}


def test_smtplib_starttls_auth_plain(postern, sink):
    body = message("smtplib starttls")
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=20) as s:
        s.ehlo("client.test")
        # Before TLS: STARTTLS and no AUTH (RFC 8314 §3.3).
        assert ehlo_extensions(s) == {**BASE_EXTENSIONS, "starttls": ""}
        s.starttls(context=tls_context(postern))
        s.ehlo("client.test")
        # After it: AUTH with the listener's mechanisms, no STARTTLS again
        # (RFC 3207 §4.2).
        assert ehlo_extensions(s) == {**BASE_EXTENSIONS, "auth": "PLAIN LOGIN"}
        s.login("apikey", postern.admin_key)  # smtplib picks PLAIN
        refused = s.sendmail("sender@example.org", ["rcpt@example.net", "other@example.com"], body)
        assert refused == {}
    received = check_delivered(
        sink, body, "sender@example.org", ["rcpt@example.net", "other@example.com"]
    )
    assert b"TLSv1.3" in received


def test_smtplib_implicit_tls_auth_login(postern, sink):
    body = message("smtplib implicit tls")
    with smtplib.SMTP_SSL(
        "127.0.0.1", postern.ports["submissions"], context=tls_context(postern), timeout=20
    ) as s:
        s.ehlo("client.test")
        # Implicit TLS (RFC 8314 §3.3): AUTH at once, never STARTTLS.
        assert ehlo_extensions(s) == {**BASE_EXTENSIONS, "auth": "PLAIN LOGIN"}
        s.user, s.password = "apikey", postern.admin_key
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235
        s.sendmail("sender@example.org", ["rcpt@example.net"], body)
    check_delivered(sink, body, "sender@example.org", ["rcpt@example.net"])


def test_wrong_key_is_refused(postern):
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context(postern))
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("apikey", "pst_" + "A" * 43)
        assert e.value.smtp_code == 535


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by .ci/run")
def test_swaks_starttls(postern, sink, tmp_path):
    body = message("swaks")
    eml = tmp_path / "m.eml"
    # swaks ends DATA with CRLF "." CRLF after the file's last line, so the
    # file is written without its final CRLF to get `body` on the wire.
    eml.write_bytes(body[:-2])
    out = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{postern.ports['submission']}",
            "--tls", "--auth", "PLAIN", "--auth-user", "apikey",
            "--auth-password", postern.admin_key,
            "--from", "sender@example.org", "--to", "rcpt@example.net",
            "--data", str(eml), "--helo", "client.test",
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "queued as" in out.stdout
    msgs = sink.wait_for(1)
    _, rest = strip_received(msgs[0]["data"])
    assert rest == body


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_curl_smtp_starttls(postern, sink, tmp_path):
    body = message("curl")
    eml = tmp_path / "m.eml"
    eml.write_bytes(body)
    out = subprocess.run(
        [
            "curl", "--silent", "--show-error",
            "--url", f"smtp://127.0.0.1:{postern.ports['submission']}/client.test",
            "--ssl-reqd", "--cacert", postern.cert,
            "--user", f"apikey:{postern.admin_key}",
            "--mail-from", "sender@example.org", "--mail-rcpt", "rcpt@example.net",
            "--upload-file", str(eml),
        ],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    check_delivered(sink, body, "sender@example.org", ["rcpt@example.net"])


def test_events_show_the_whole_path(postern, sink):
    body = message("events")
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context(postern))
        s.login("apikey", postern.admin_key)
        s.sendmail("sender@example.org", ["rcpt@example.net"], body)
        reply = s.noop()
    assert reply[0] == 250
    sink.wait_for(1)
    # The event is written right after the sink's 250; allow it a moment.
    import time
    for _ in range(100):
        events = json.loads(postern.cli("events", "--json").stdout)
        kinds = [e["event"] for e in events]
        if "delivered" in kinds:
            break
        time.sleep(0.05)
    assert kinds[:1] == ["processed"], events
    assert "delivered" in kinds, events
    delivered = [e for e in events if e["event"] == "delivered"][0]
    assert delivered["recipient"] == "rcpt@example.net"
    assert "250" in delivered["detail"]
    by_id = json.loads(postern.cli("events", "--message", delivered["message_id"], "--json").stdout)
    assert {e["message_id"] for e in by_id} == {delivered["message_id"]}


def test_mx_accepts_only_relay_domains(postern, sink):
    with smtplib.SMTP("127.0.0.1", postern.ports["mx"], timeout=20) as s:
        s.ehlo("other-mta.test")
        # The MX listener offers STARTTLS and never AUTH.
        assert ehlo_extensions(s) == {**BASE_EXTENSIONS, "starttls": ""}
        code, _ = s.mail("someone@elsewhere.test")
        assert code == 250
        code, msg = s.rcpt("user@external.test")
        assert code == 550, msg
        code, _ = s.rcpt("user@relay.test")
        assert code == 250
        code, _ = s.data(message("inbound"))
        assert code == 250
    msgs = sink.wait_for(1)
    assert msgs[0]["rcpt_tos"] == ["user@relay.test"]
