"""End-to-end fixtures: the real `postern` binary on loopback, a third-party
SMTP sink (aiosmtpd) as its next hop, and helpers for real clients."""

import base64
import http.client
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("POSTERN_BIN", ROOT / "target" / "debug" / "postern"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


class SinkHandler:
    """Keeps every message exactly as it arrived."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        self.reply = "250 2.0.0 OK sink"
        # While true, "defer-" addresses get a temporary failure.
        self.defer = True

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # Addresses starting with "reject-" do not exist here.
        if address.startswith("reject-"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if address.startswith("defer-") and self.defer:
            return "452 4.2.2 <%s>: Mailbox full, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "data": envelope.original_content,
                    "peer": session.peer[0],
                    "helo": session.host_name,
                }
            )
        return self.reply


class Sink:
    def __init__(self):
        self.handler = SinkHandler()
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, decode_data=False
        )
        self.controller.start()

    @property
    def messages(self):
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count, timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.messages) >= count:
                return self.messages
            time.sleep(0.05)
        raise TimeoutError(f"sink has {len(self.messages)} messages, wanted {count}")

    def stop(self):
        self.controller.stop()


class Postern:
    """A `postern serve` process with its own data directory and ports."""

    def __init__(self, workdir, sink_port, extra_config="", queue_config='retry_initial = "1s"\nretry_max = "2s"', enforce_senders=False, http_config="", host="127.0.0.1"):
        # host: the listeners' address; "[::]" makes them dual-stack, so
        # IPv4 clients arrive as IPv4-mapped IPv6 addresses.
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.ports = {
            "submission": free_port(),
            "submissions": free_port(),
            "mx": free_port(),
            "http": free_port(),
            "submission_cram": free_port(),
        }
        self.config_path = self.workdir / "postern.toml"
        self.config_path.write_text(
            f"""
[server]
hostname = "postern.test"
data_dir = "{self.data_dir}"
shutdown_grace = "5s"

[[listener]]
role = "submission"
address = "{host}:{self.ports['submission']}"

[[listener]]
role = "submissions"
address = "{host}:{self.ports['submissions']}"

[[listener]]
role = "mx"
address = "{host}:{self.ports['mx']}"

[[listener]]
role = "submission"
address = "{host}:{self.ports['submission_cram']}"
auth_mechanisms = ["CRAM-MD5", "PLAIN", "LOGIN"]

[http]
address = "{host}:{self.ports['http']}"
{http_config}

[[route]]
domain = "*"
next_hop = "127.0.0.1:{sink_port}"
tls = "none"

[relay]
domains = ["relay.test"]

[smtp]
# Sender verification has its own tests (test_senders.py); elsewhere any
# sender is allowed, so each test need not set up domains.
require_verified_senders = {"true" if enforce_senders else "false"}

[queue]
{queue_config}
{extra_config}
"""
        )
        self.proc = None
        self.admin_key = None
        self.log = self.workdir / "postern.log"

    @property
    def cert(self):
        return str(self.data_dir / "tls" / "cert.pem")

    def cli(self, *args, check=True):
        return subprocess.run(
            [str(BIN), "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=logf,
            text=True,
        )
        # The first start prints the admin key on stdout; later starts print nothing.
        wait_port(self.ports["submission"])
        wait_port(self.ports["mx"])
        return self

    def read_admin_key(self):
        lines = []
        deadline = time.time() + 10
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("pst_"):
                self.admin_key = line.strip()
                return self.admin_key
        raise AssertionError(f"no admin key printed: {lines}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.stop()


@pytest.fixture
def strict(sink):
    """A Postern that enforces verified senders (the default outside tests)."""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, enforce_senders=True).start()
        p.read_admin_key()
        yield p
        p.stop()


def send_as(p, key, mail_from, header_from, rcpt="rcpt@example.net"):
    """Submits a small message over STARTTLS + AUTH; (code, text) of the
    final reply."""
    body = f"From: {header_from}\r\nTo: {rcpt}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.login("apikey", key)
        try:
            s.sendmail(mail_from, [rcpt], body)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


def auth_plain(p, user, secret, source="127.0.0.1", role="submission", authzid=""):
    """One AUTH PLAIN (RFC 4616: authzid, user, secret) after STARTTLS on a
    new connection from the loopback address `source`: (code, text) of the
    reply. The connection is closed
    without QUIT, which a refused AUTH may already have ended."""
    s = smtplib.SMTP("127.0.0.1", p.ports[role], timeout=30, source_address=(source, 0))
    try:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.ehlo()
        token = base64.b64encode(f"{authzid}\0{user}\0{secret}".encode()).decode()
        code, text = s.docmd("AUTH", "PLAIN " + token)
        return code, text.decode()
    finally:
        s.close()


@pytest.fixture
def postern(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port).start()
        p.read_admin_key()
        yield p
        p.stop()


def strip_received(data: bytes) -> tuple[bytes, bytes]:
    """Splits Postern's own Received: header (first header, folded lines)
    from the rest of the message."""
    assert data.startswith(b"Received: "), data[:80]
    lines = data.split(b"\r\n")
    i = 1
    while lines[i].startswith((b"\t", b" ")):
        i += 1
    return b"\r\n".join(lines[:i]) + b"\r\n", b"\r\n".join(lines[i:])


def api(p, key, method, path, body=None, source=None, headers=None):
    """An HTTP API call with a bearer key (None: no Authorization header),
    from the loopback address `source` if given, with extra `headers`:
    (status, decoded JSON, the text if not JSON, or None)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", p.ports["http"], timeout=30,
        source_address=(source, 0) if source else None,
    )
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=sent)
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    if not raw:
        return r.status, None
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw.decode(errors="replace")
