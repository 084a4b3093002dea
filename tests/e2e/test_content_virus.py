"""Content checks of inbound mail: viruses through a real clamd (Debian's
clamav-daemon) on loopback, and attachments refused by their sniffed
type. smtplib is the sending MTA, the sink the internal server behind
Postern.

No signature download is possible here: clamd runs on a database this
file writes itself, one body signature (`.ndb`, clamd's extended
signature format) for the EICAR test file, so it starts in about a
second."""

import json
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import ROOT, Postern, free_port, metric, wait_until

# The EICAR anti-virus test file (eicar.org): harmless, and every scanner
# is meant to report it.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Eicar-Signature"
# clamd marks signatures from databases that are not ClamAV's own.
REPORTED = f"{SIGNATURE}.UNOFFICIAL"
VECTORS = ROOT / "crates" / "postern-content" / "testdata"


class Clamd:
    """clamd in the foreground on a loopback port, with a database of one
    signature: the EICAR file anywhere in what it scans."""

    def __init__(self, workdir):
        self.dir = Path(workdir)
        db = self.dir / "db"
        db.mkdir()
        # NAME:TARGET:OFFSET:HEXSIG (ClamAV's signature docs, .ndb): any
        # file type, any offset.
        (db / "postern-test.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
        self.port = free_port()
        self.log = self.dir / "clamd.log"
        conf = self.dir / "clamd.conf"
        conf.write_text(
            f"Foreground yes\nTCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {db}\nLogFile {self.log}\nLogTime yes\n"
            # Clean streams logged too: tests count what clamd scanned.
            "LogClean yes\n"
        )
        binary = shutil.which("clamd") or "/usr/sbin/clamd"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        try:
            wait_until(self.answers, timeout=60, what=f"clamd answering PING on {self.port}")
        except TimeoutError:
            self.stop()
            raise AssertionError(f"clamd did not start: {self.log.read_text(errors='replace') if self.log.exists() else ''}")

    def answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"clamd exited with {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace') if self.log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"zPING\0")
                return s.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def clamd():
    with tempfile.TemporaryDirectory() as d:
        c = Clamd(d)
        yield c
        c.stop()


@contextmanager
def gateway(sink, content, relay_domains=("relay.test",)):
    """A Postern whose [content] table is `content`."""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, relay_domains=relay_domains,
                    relay_config='recipient_check = "any"', extra_config=content).start()
        p.read_admin_key()
        try:
            yield p
        finally:
            p.stop()


def clamd_table(c):
    return f'[content.clamd]\naddress = "127.0.0.1:{c.port}"\ntimeout = "10s"\n'


def mail(subject, attachments=(), rcpt="alice@relay.test"):
    """A message with a text body and each (file name, content type,
    bytes) attached (base64, as mail clients attach files)."""
    m = EmailMessage()
    m["From"] = "bob@outside.example"
    m["To"] = rcpt
    m["Subject"] = subject
    m["Message-ID"] = f"<{time.time_ns()}@outside.example>"
    m.set_content("Please see the attached file.\n")
    for name, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


def send(p, body, rcpt="alice@relay.test"):
    """(code, reply text) of the end of DATA on the mx listener."""
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=60) as s:
        s.ehlo("mta.outside.example")
        s.mail("bob@outside.example")
        assert s.rcpt(rcpt)[0] == 250
        code, reply = s.data(body)
    return code, reply.decode()


def delivered(sink, subject):
    """The sink's messages with `subject`."""
    return [m for m in sink.messages if f"Subject: {subject}\r\n".encode() in m["data"]]


def arrives_intact(sink, body, subject):
    """Waits for the message with `subject` and checks that below the
    header fields Postern adds (Received), it is the bytes sent."""
    got = wait_until(lambda: delivered(sink, subject), what=f"{subject!r} at the sink")
    assert len(got) == 1, got
    data = got[0]["data"]
    assert data.endswith(body), data[:400]
    assert b"X-Postern-Content" not in data
    return got[0]


def test_an_eicar_attachment_is_refused_with_the_virus_name(sink, clamd):
    with gateway(sink, clamd_table(clamd)) as p:
        code, reply = send(p, mail("infected", [("eicar.com", "application/octet-stream", EICAR)]))
        assert code == 550, reply
        assert reply.startswith("5.7.1 ") and f"virus found: {REPORTED}" in reply, reply
        assert metric(p, "postern_content_viruses_total") == 1
        # A clean message sent after it arrives, alone: the infected one
        # was never queued (by the time the later one is delivered, an
        # earlier queued one would have been too).
        clean = mail("clean")
        assert send(p, clean)[0] == 250
        arrives_intact(sink, clean, "clean")
        assert delivered(sink, "infected") == []
        assert len(sink.messages) == 1
        assert metric(p, "postern_content_viruses_total") == 1
    # clamd saw it and said so in its own log.
    assert f"{REPORTED} FOUND" in clamd.log.read_text()


def test_a_quarantined_virus_is_held_then_released_to_the_internal_server(sink, clamd):
    content = f'[content]\nvirus = "quarantine"\n{clamd_table(clamd)}'
    with gateway(sink, content) as p:
        infected = mail("held", [("eicar.txt", "text/plain", EICAR)])
        code, reply = send(p, infected)
        assert code == 250, reply
        [held] = json.loads(p.cli("quarantine", "list", "--json").stdout)
        # The reason, then the checks' summary (the intake keeps both).
        assert held["reason"].startswith(f"virus found: {REPORTED} (content: virus=quarantine("), held
        assert [r["email"] for r in held["recipients"]] == ["alice@relay.test"]
        # Not delivered meanwhile: a later clean message arrives alone.
        clean = mail("clean")
        assert send(p, clean)[0] == 250
        arrives_intact(sink, clean, "clean")
        assert delivered(sink, "held") == []

        out = p.cli("quarantine", "release", held["id"])
        assert "1 recipient(s) released" in out.stdout, out.stdout
        got = arrives_intact(sink, infected, "held")
        assert got["rcpt_tos"] == ["alice@relay.test"]
        assert json.loads(p.cli("quarantine", "list", "--json").stdout) == []


def test_clamd_stopped_defers_or_accepts_as_on_error_says(sink, clamd):
    # relay.test keeps the default (defer); open.test accepts unchecked.
    content = (clamd_table(clamd)
               + '[[content.domain]]\ndomain = "open.test"\non_error = "accept"\n')
    with gateway(sink, content, relay_domains=("relay.test", "open.test")) as p:
        # Scanned while clamd runs.
        before = mail("while up")
        assert send(p, before)[0] == 250
        arrives_intact(sink, before, "while up")

        clamd.stop()
        code, reply = send(p, mail("deferred"))
        assert code == 451, reply
        assert reply.startswith("4.3.0 Message not checked (virus: clamd: "), reply
        assert "try again later" in reply

        accepted = mail("unchecked", rcpt="carol@open.test")
        code, reply = send(p, accepted, rcpt="carol@open.test")
        assert code == 250, reply
        arrives_intact(sink, accepted, "unchecked")
        assert delivered(sink, "deferred") == []
        events = json.loads(p.cli("events", "--json", "--recipient", "carol@open.test").stdout)
        processed = [e for e in events if e["event"] == "processed"]
        assert len(processed) == 1 and "virus=failed(clamd: " in processed[0]["detail"], events
        assert "unchecked=accepted" in processed[0]["detail"], processed


def test_an_executable_named_invoice_pdf_is_refused(sink):
    pe = (VECTORS / "pe.bin").read_bytes()
    with gateway(sink, "[content.attachments]\n") as p:
        code, reply = send(p, mail("exe", [("invoice.pdf", "application/pdf", pe)]))
        assert code == 550, reply
        assert 'attachment "invoice.pdf" refused: its content is exe' in reply, reply
        # A script has no magic bytes: its name refuses it, in a zip too.
        code, reply = send(p, mail("zip", [("docs.zip", "application/zip",
                                            (VECTORS / "script.zip.bin").read_bytes())]))
        assert code == 550, reply
        assert 'attachment "docs.zip" refused: it holds "invoice/open-me.JS" (.js)' in reply, reply
        # Neither was queued: a clean message sent after them arrives alone.
        clean = mail("clean")
        assert send(p, clean)[0] == 250
        arrives_intact(sink, clean, "clean")
        assert len(sink.messages) == 1


def test_allowed_attachments_pass_both_checks_and_arrive_intact(sink, clamd):
    content = clamd_table(clamd) + "[content.attachments]\n"
    files = [
        ("invoice.pdf", "application/pdf", (VECTORS / "empty.pdf.bin").read_bytes()),
        ("pixel.png", "image/png", (VECTORS / "pixel.png.bin").read_bytes()),
        ("notes.zip", "application/zip", (VECTORS / "text.zip.bin").read_bytes()),
    ]
    with gateway(sink, content) as p:
        body = mail("allowed", files)
        code, reply = send(p, body)
        assert code == 250, reply
        got = arrives_intact(sink, body, "allowed")
        assert got["rcpt_tos"] == ["alice@relay.test"]
        [event] = [e for e in json.loads(p.cli("events", "--json").stdout) if e["event"] == "processed"]
        assert "content: virus=clean attachment=clean" in event["detail"], event


def test_a_tagged_virus_is_delivered_with_the_verdict_header(sink, clamd):
    content = f'[content]\nvirus = "tag"\n{clamd_table(clamd)}'
    with gateway(sink, content) as p:
        infected = mail("tagged", [("eicar.txt", "text/plain", EICAR)])
        code, reply = send(p, infected)
        assert code == 250, reply
        [got] = wait_until(lambda: delivered(sink, "tagged"), what="the tagged message at the sink")
        data = got["data"]
        # Postern's field, above the message as sent (RFC 5322 §3.6: a
        # field may be folded; the verdict folds before each reason).
        assert f"X-Postern-Content: tag;\r\n\tvirus found: {REPORTED}\r\n".encode() in data, data[:600]
        assert data.endswith(infected)


def test_a_message_above_max_size_is_not_scanned(sink, clamd):
    # 2000 octets sent to clamd at most; the message below is larger.
    content = clamd_table(clamd).replace('timeout = "10s"\n', 'timeout = "10s"\nmax_size = 2000\n')
    with gateway(sink, content, relay_domains=("relay.test", "open.test")) as p:
        small = mail("small")
        assert len(small) < 2000
        assert send(p, small)[0] == 250
        arrives_intact(sink, small, "small")
        scans_before = clamd.log.read_text().count("instream(")
        assert scans_before == 1, clamd.log.read_text()

        big = mail("big", [("data.txt", "text/plain", b"x" * 3000)])
        code, reply = send(p, big)
        assert code == 451, reply
        assert "above content.clamd.max_size (2000), not scanned" in reply, reply
        # clamd logs each stream it scans ("instream(127.0.0.1@PORT): OK"),
        # synchronously with its reply, and was never sent this one.
        assert clamd.log.read_text().count("instream(") == scans_before
        assert delivered(sink, "big") == []
