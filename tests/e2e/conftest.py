"""End-to-end fixtures: the real `postern` binary on loopback, a third-party
SMTP sink (aiosmtpd) as its next hop, and helpers for real clients."""

import base64
import email
import http.client
import json
import logging
import os
import re
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
from aiosmtpd.smtp import TLSSetupException

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("POSTERN_BIN", ROOT / "target" / "debug" / "postern"))

# Every Postern made during the running test, for `server_health`.
_SERVERS = []
# How Rust reports a panic on stderr (the server's log), in any thread:
# "thread 'NAME' panicked at", newer releases with " (TID)" after the name.
PANIC = re.compile(r"thread '[^']*'(?: \(\d+\))? panicked at ")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "stops_server: the test ends its server itself (kill -9, a signal), so "
        "exits during it are expected; a panic in the log still fails it",
    )


@pytest.fixture(autouse=True)
def server_health(request):
    """Fails the test (at teardown) when a server it started exited without
    being stopped, did not stop cleanly on SIGTERM, or logged a panic. Only
    tests marked `stops_server` may end their servers themselves."""
    _SERVERS.clear()
    yield
    stops_allowed = request.node.get_closest_marker("stops_server") is not None
    problems = []
    for p in _SERVERS:
        # Normally the test or its fixture stopped it already (the check ran
        # then, while the log still existed); a server left running is
        # stopped here.
        p.stop()
        problems += p.health_problems(stops_allowed)
    _SERVERS.clear()
    if problems:
        pytest.fail("server health:\n" + "\n".join(problems), pytrace=False)


def _ephemeral_low():
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Listener ports come from below the kernel's ephemeral range, in turn. A
# port the kernel hands out for port 0 is an ephemeral one: free when asked,
# it could be taken by the source port of any outgoing connection (the
# suite makes thousands) before the server bound it, and the server then
# failed to start.
_PORTS = iter(range(20000 + (os.getpid() % 64) * 100, _ephemeral_low()))


def free_port():
    for port in _PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below the ephemeral range")


def wait_port(port, timeout=30.0, source=None):
    """Waits until something listens on loopback `port`; the probe comes
    from `source` (a loopback address) when given."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5,
                                          source_address=(source, 0) if source else None):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def wait_until(condition, timeout=30.0, what="the condition"):
    """Polls `condition` until it returns something truthy (and returns
    that), or fails after `timeout` seconds naming `what`."""
    deadline = time.time() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.time() >= deadline:
            raise TimeoutError(f"{what} did not hold within {timeout:.0f} s")
        time.sleep(0.05)


def wait_for_clock(rfc3339):
    """Sleeps until the wall clock is past `rfc3339` (as Postern prints
    times): for checks about expiry, which wait for time itself to pass,
    not for the server to do something."""
    import datetime
    at = datetime.datetime.fromisoformat(rfc3339).timestamp()
    while time.time() <= at:
        time.sleep(at - time.time() + 0.01)


def poll(fetch, done, timeout=30.0, what="condition"):
    """Calls `fetch` until `done(value)` holds, and returns that value;
    fails after `timeout` seconds, naming the last value."""
    last = []

    def check():
        last[:] = [fetch()]
        return done(last[0])

    try:
        wait_until(check, timeout, what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last: {last[0]!r}") from None
    return last[0]


class SinkHandler:
    """Keeps every message exactly as it arrived."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        self.reply = "250 2.0.0 OK sink"
        # While true, "defer-" addresses get a temporary failure.
        self.defer = True
        # The TLS version of every completed STARTTLS handshake, in order,
        # and OpenSSL's reason for every one that failed.
        self.handshakes = []
        self.failed_handshakes = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # Addresses starting with "reject-" do not exist here.
        if address.startswith("reject-"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if address.startswith("defer-") and self.defer:
            return "452 4.2.2 <%s>: Mailbox full, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def handle_STARTTLS(self, server, session, envelope):
        # aiosmtpd calls this once a STARTTLS handshake has completed (never
        # for one that failed); the session goes on either way.
        with self.lock:
            self.handshakes.append(session.ssl["ssl_object"].version())
        return True

    async def handle_exception(self, error):
        # As aiosmtpd does without this hook (log, answer 500), and a
        # STARTTLS handshake that failed (aiosmtpd then closes the
        # connection) is kept with OpenSSL's reason for it.
        if isinstance(error, TLSSetupException):
            with self.lock:
                self.failed_handshakes.append(getattr(error.__cause__, "reason", None) or repr(error.__cause__))
        logging.getLogger("mail.log").exception("SMTP session exception")
        return f"500 Error: ({error.__class__.__name__}) {error}"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "data": envelope.original_content,
                    "peer": session.peer[0],
                    "helo": session.host_name,
                    # The TLS version the message came over ("TLSv1.3"),
                    # None for plaintext.
                    "tls": session.ssl["ssl_object"].version() if session.ssl else None,
                    # When the sink took it (its 250 follows at once).
                    "at": time.monotonic(),
                    # The connection it came on (one object per connection).
                    "session": session,
                }
            )
        return self.reply


class Sink:
    """aiosmtpd on loopback. tls: a `certificate()` to offer STARTTLS with,
    and then nothing but EHLO, STARTTLS and QUIT is taken before it.
    tls_context: instead, an ssl.SSLContext for the server side; STARTTLS
    (RFC 3207) is offered, not required, in whatever TLS that context
    allows. auth: (user, password) that must be given with AUTH (over TLS
    only) before MAIL; the session's `auth_data` is then the user name.
    host, port: where it listens (default 127.0.0.1 and a free port), so
    that MX hosts of several domains can share one port on different
    loopback addresses."""

    def __init__(self, tls=None, auth=None, tls_context=None, host="127.0.0.1", port=None):
        self.handler = SinkHandler()
        self.host = host
        self.port = port or free_port()
        options = {}
        if tls_context is not None:
            options.update(tls_context=tls_context)
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls["cert"], tls["key"])
            options.update(tls_context=context, require_starttls=True)
        if auth is not None:
            from aiosmtpd.smtp import AuthResult, LoginPassword

            def authenticate(server, session, envelope, mechanism, data):
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == tuple(x.encode() for x in auth)
                # handled=False: aiosmtpd then answers a failure with 535
                # (its default, True, would leave the client waiting).
                return AuthResult(success=ok, handled=False, auth_data=auth[0] if ok else None)

            options.update(auth_required=True, authenticator=authenticate)
        self.controller = Controller(
            self.handler, hostname=host, port=self.port, decode_data=False, **options
        )
        self.controller.start()

    @property
    def messages(self):
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def handshakes(self):
        with self.handler.lock:
            return list(self.handler.handshakes)

    @property
    def failed_handshakes(self):
        with self.handler.lock:
            return list(self.handler.failed_handshakes)

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

    def __init__(self, workdir, sink_port, extra_config="", queue_config='retry_initial = "1s"\nretry_max = "2s"', enforce_senders=False, http_config="", host="127.0.0.1", relay_config="", route_every_domain=True, relay_domains=("relay.test",), inbound_auth=None, route_config=""):
        # host: the listeners' address; "[::]" makes them dual-stack, so
        # IPv4 clients arrive as IPv4-mapped IPv6 addresses.
        # relay_config: more keys of the [relay] table; relay_domains: its
        # domains (mail for them is accepted on the mx listener).
        # route_every_domain: the "*" route to the sink; without it only
        # relay.test is routed (to the sink) and other domains go to MX.
        # inbound_auth: the [inbound_auth] keys (the checks on); None
        # turns them off. route_config: more keys of the sink's [[route]].
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.ports = {
            "submission": free_port(),
            "submissions": free_port(),
            "mx": free_port(),
            "http": free_port(),
            "submission_cram": free_port(),
        }
        if inbound_auth is None:
            # SPF/DKIM/DMARC/ARC have their own tests (test_inbound_auth.py),
            # with a DNS server of their own; elsewhere mail on mx is not
            # checked (as senders are not verified, below).
            inbound_auth = "enabled = false"
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
domain = "{"*" if route_every_domain else "relay.test"}"
next_hop = "127.0.0.1:{sink_port}"
tls = "none"
{route_config}

[relay]
domains = {json.dumps(list(relay_domains))}
{relay_config}

[inbound_auth]
{inbound_auth}

[smtp]
# Sender verification has its own tests (test_senders.py); elsewhere any
# sender is allowed, so each test need not set up domains.
require_verified_senders = {"true" if enforce_senders else "false"}

[queue]
{queue_config}
{extra_config}
"""
        )
        self._init_process()

    def _init_process(self):
        """What every run needs besides the configuration: `workdir` and
        `data_dir` are set by then."""
        # The working directory of the server and the CLI (None: the
        # test's); only the embedded default's relative data directory
        # depends on it.
        self.cwd = None
        self.proc = None
        # The server's own pid: proc.pid, unless it runs under a wrapper.
        self.pid = None
        self.admin_key = None
        self.log = self.workdir / "postern.log"
        # What `server_health` judges after the test.
        self._exit_expected = False
        self.unasked_exits = []
        self.kills = 0
        self.stop_failures = []
        self.panics = []
        _SERVERS.append(self)

    @property
    def cert(self):
        return str(self.data_dir / "tls" / "cert.pem")

    def location_args(self):
        """The arguments that name this server's configuration."""
        return ["--config", str(self.config_path)]

    def cli(self, *args, check=True, input=None, env=None):
        """Runs `postern ARGS` on this server's data directory; `input` is
        its standard input, `env` (when given) its whole environment."""
        return subprocess.run(
            [str(BIN), *self.location_args(), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
            input=input,
            env=env,
            cwd=self.cwd,
        )

    def start(self, wrapper=(), preexec_fn=None, env=None):
        """Runs `postern serve`; under `wrapper` (a command such as strace
        that runs the rest of its arguments) when given; with `env` as its
        whole environment when given."""
        self._note_unasked_exit()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*wrapper, str(BIN), "serve", *self.location_args()],
                stdout=subprocess.PIPE,
                stderr=logf,
                text=True,
                preexec_fn=preexec_fn,
                env=env,
                cwd=self.cwd,
            )
        self._exit_expected = False
        self.pid = self._server_pid() if wrapper else self.proc.pid
        # The first start prints the admin key on stdout; later starts print nothing.
        wait_port(self.ports["submission"])
        wait_port(self.ports["mx"])
        # The HTTP listener is bound after the SMTP ones: a test that goes
        # straight to the API would otherwise race it (seen under strace).
        # The probe comes from an address no test uses, so it never counts
        # against a test client's per-address connection cap while the
        # server is still closing it.
        wait_port(self.ports["http"], source="127.0.0.254")
        return self

    def _server_pid(self, timeout=10.0):
        """The wrapper's child running the server: signals go to the server
        itself (strace, for one, detaches on SIGTERM and leaves its tracee
        running). Other children (strace forks a few to probe the kernel
        first) are passed over."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            for pid in children.read_text().split():
                try:
                    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue  # gone already
                if argv0 == str(BIN).encode():
                    return int(pid)
            time.sleep(0.02)
        raise TimeoutError(f"{self.proc.args[0]} started no server")

    def _note_unasked_exit(self):
        """Records a run that ended without stop() or kill9()."""
        if self.proc is not None and not self._exit_expected and self.proc.poll() is not None:
            self.unasked_exits.append(self.proc.returncode)
            self._exit_expected = True

    def _scan_log(self):
        # The log only grows (every start appends), so the latest read has
        # every panic so far.
        if self.log.exists():
            text = self.log.read_text(errors="replace")
            self.panics = [line for line in text.splitlines() if PANIC.search(line)]

    def health_problems(self, stops_allowed):
        self._note_unasked_exit()
        self._scan_log()
        problems = [f"panic in {self.log}: {line}" for line in self.panics]
        problems += self.stop_failures
        if not stops_allowed:
            problems += [f"the server exited by itself with code {c}" for c in self.unasked_exits]
            if self.kills:
                problems.append(f"kill9() called {self.kills} times in a test not marked stops_server")
        return problems

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
        self._note_unasked_exit()
        self.kills += 1
        self._exit_expected = True
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._scan_log()

    def stop(self):
        """SIGTERM, and a clean exit (code 0) within 20 s is expected."""
        if self.proc is None:
            return None
        self._note_unasked_exit()
        if self.proc.poll() is None:
            self._exit_expected = True
            os.kill(self.pid, signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=20)
                if code != 0:
                    self.stop_failures.append(f"the server exited with code {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.stop_failures.append("the server did not exit within 20 s of SIGTERM")
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._scan_log()
        return self.proc.returncode


class DefaultPostern(Postern):
    """`postern serve` with no `--config`, as a user first runs it (README,
    "What `postern serve` does on first start"): the embedded default, so
    its fixed ports, with `workdir` as the working directory. `data_dir`,
    when given, is passed as `--data-dir`; otherwise the default
    `./postern-data` applies. Those ports are the same for every run, so
    start it only in a network namespace of its own (`in_own_network`)."""

    PORTS = {"submission": 2587, "submissions": 2465, "mx": 2025, "http": 8025}

    def __init__(self, workdir, data_dir=None):
        self.workdir = Path(workdir)
        self.chosen_data_dir = data_dir
        self.data_dir = Path(data_dir) if data_dir is not None else self.workdir / "postern-data"
        self.ports = dict(self.PORTS)
        self._init_process()
        self.cwd = self.workdir

    def location_args(self):
        return [] if self.chosen_data_dir is None else ["--data-dir", str(self.chosen_data_dir)]


# unshare(2)'s flag for a new network namespace (<linux/sched.h>).
CLONE_NEWNET = 0x40000000
# <linux/sockios.h> and <net/if.h>: read and set an interface's flags.
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def in_own_network(fn):
    """Runs `fn()` and returns its result, in a thread of its own that is
    alone in a new network namespace with only loopback up: every socket
    `fn` opens, and every process it starts (they inherit the thread's
    namespace), sees no other listener on the machine, so fixed ports can
    be bound and probed without meeting another test's or user's. Skips
    the test only when the namespace cannot be made (unshare needs
    CAP_SYS_ADMIN)."""
    import ctypes
    import fcntl
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    outcome = {}

    def run():
        # A network namespace belongs to a thread (unshare affects only
        # the caller), so the rest of the test process keeps its own.
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            outcome["refused"] = f"unshare(CLONE_NEWNET): {os.strerror(err)}"
            return
        try:
            # `ip link set lo up`, without needing iproute2: a new
            # namespace's loopback starts down.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                req = struct.pack("16sH14x", b"lo", 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
            outcome["value"] = fn()
        except BaseException as e:  # re-raised in the test's own thread
            outcome["error"] = e

    t = threading.Thread(target=run, name="own-network")
    t.start()
    t.join()
    if "refused" in outcome:
        pytest.skip(f"no network namespace of its own ({outcome['refused']}): the "
                    "test binds Postern's fixed default ports, safe only there")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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


def send_mx(p, data, rcpts=("user@relay.test",), mail_from="sender@sender.test", helo="mta.sender.test"):
    """Sends `data` unauthenticated to the mx listener, as the internet
    does: (code, text) of the reply to DATA (the 250's text names the
    message id)."""
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], local_hostname=helo, timeout=60) as s:
        s.ehlo()
        code, text = s.mail(mail_from)
        assert code == 250, text
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, text)
        code, text = s.data(data)
        return code, text.decode()


def quarantined(p):
    """The held messages, as `postern quarantine list --json` gives them."""
    return json.loads(p.cli("quarantine", "list", "--json").stdout)


def link_in(sink, address, count):
    """The verification link in the count-th mail to `address`."""
    deadline = time.time() + 30
    while time.time() < deadline:
        mails = [m for m in sink.messages if address in m["rcpt_tos"]]
        if len(mails) >= count:
            m = mails[count - 1]
            assert m["mail_from"] in ("", "<>"), "verification mails have a null return path"
            msg = email.message_from_bytes(m["data"])
            assert msg["Auto-Submitted"] == "auto-generated"
            text = msg.get_payload(decode=True).decode()
            return re.search(r"(http://\S+/v3/verified_senders/verify/\S+)", text).group(1)
        time.sleep(0.05)
    raise TimeoutError(f"no verification mail #{count} to {address}")


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


def tenant(p, name, domain):
    """An account that holds `domain` verified (by the operator, no DNS
    here) and an API key of its own."""
    p.cli("account", "create", name)
    p.cli("domain", "add", domain, "--account", name)
    p.cli("domain", "verify", domain, "--operator")
    return json.loads(p.cli("key", "create", "--account", name, "--json").stdout)["key"]


def ehlo_extensions(s):
    """The extensions an smtplib client saw in its last EHLO reply
    (keyword: parameters). smtplib prefixes AUTH's parameters with a space
    (it merges old-style AUTH= lines into them); that space is dropped."""
    return {k: v.strip() if k == "auth" else v for k, v in s.esmtp_features.items()}


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
    status, _, data = api_with_headers(p, key, method, path, body, source, headers)
    return status, data


def api_with_headers(p, key, method, path, body=None, source=None, headers=None):
    """Like `api`, with the response headers: (status, headers, data)."""
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
        return r.status, r.headers, None
    try:
        return r.status, r.headers, json.loads(raw)
    except ValueError:
        return r.status, r.headers, raw.decode(errors="replace")


def curl(p, method, path, key=None):
    """An HTTP API call made with curl (a client other than Python's):
    (status, decoded JSON or None)."""
    out = subprocess.run(
        ["curl", "-sS", "-X", method, "-w", "\n%{http_code}",
         "-H", f"Authorization: Bearer {key or p.admin_key}",
         f"http://127.0.0.1:{p.ports['http']}{path}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), (json.loads(body) if body.strip() else None)


_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric_samples(p, name):
    """Every sample of the metric `name` on the server's /metrics, as
    [(labels dict, value)]."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{p.ports['http']}/metrics", timeout=10).read().decode()
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            samples.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples


def metric(p, name, **labels):
    """The sum of the samples of `name` that carry all of `labels` (0 when
    none has been recorded)."""
    return sum(v for got, v in metric_samples(p, name) if labels.items() <= got.items())


def certificate(directory, stem, names=(), ips=(), issuer=None, ca=False):
    """A certificate and key made with cryptography, written to
    DIRECTORY/STEM-cert.pem and STEM-key.pem: for the DNS `names` and IP
    addresses `ips`, signed by `issuer` (the dict another call returned)
    or by itself. `ca=True` makes a CA that can issue others. Returns
    {"cert": path, "key": path, "_cert": ..., "_key": ...}."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer["_cert"].subject, issuer["_key"])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    cert = builder.sign(signing_key, hashes.SHA256())
    cert_path, key_path = Path(directory) / f"{stem}-cert.pem", Path(directory) / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"cert": cert_path, "key": key_path, "_cert": cert, "_key": key}


def server_context(made):
    """A server-side ssl.SSLContext presenting the certificate `certificate`
    made."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(made["cert"], made["key"])
    return ctx


def txt_from_loopback(port):
    """A dkimpy `dnsfunc` asking the DNS server on loopback `port` for TXT
    records (the first string set of the first answer)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    def dnsfunc(name, timeout=5):
        q = dns.message.make_query(name.decode() if isinstance(name, bytes) else name, dns.rdatatype.TXT)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
        for rrset in r.answer:
            for rd in rrset:
                return b"".join(rd.strings)
        return None
    return dnsfunc


class DnsZone:
    """A DNS server on loopback (dnslib, UDP) answering A and TXT queries
    for the names the test sets, and changing its answers when the test
    says so. TTL 0: a resolver must ask again each time rather than keep an
    answer. Names it does not know are NXDOMAIN; a known name without
    records of the type asked gets an empty answer. While `mute` is true it
    answers nothing at all (a dead server; each question is still
    recorded). Every question asked is kept, in order, in `queries` as
    (name, type), the root as "."."""

    def __init__(self):
        from dnslib.server import BaseResolver, DNSLogger, DNSServer

        self.a = {}
        self.mute = False
        self.txts = {}
        self.queries = []
        self.lock = threading.Lock()
        # Released on stop: the questions a mute server sat on end then.
        self._stopped = threading.Event()
        zone = self

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                from dnslib import QTYPE, RCODE, RR, TXT, A

                reply = request.reply()
                qname = str(request.q.qname).lower().rstrip(".")
                with zone.lock:
                    zone.queries.append((qname or ".", QTYPE[request.q.qtype]))
                    ips = zone.a.get(qname)
                    txts = zone.txts.get(qname)
                    mute = zone.mute
                if mute:
                    zone._stopped.wait()
                if ips is None and txts is None:
                    reply.header.rcode = RCODE.NXDOMAIN
                elif request.q.qtype == QTYPE.A:
                    for ip in ips or ():
                        reply.add_answer(RR(qname + ".", QTYPE.A, rdata=A(ip), ttl=0))
                elif request.q.qtype == QTYPE.TXT:
                    for text in txts or ():
                        # RFC 1035 §3.3.14: a TXT record is strings of at
                        # most 255 octets each (long DKIM keys are split).
                        data = text.encode()
                        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
                        reply.add_answer(RR(qname + ".", QTYPE.TXT, rdata=TXT(chunks), ttl=0))
                return reply

        quiet = DNSLogger(logf=lambda _line: None)
        self.server = DNSServer(Resolver(), port=0, address="127.0.0.1", logger=quiet)
        self.port = self.server.server.server_address[1]
        self.server.start_thread()

    def set(self, name, *ips):
        with self.lock:
            self.a[name.lower().rstrip(".")] = list(ips)

    def asked(self, name, qtype="A"):
        """How many times `name` was asked for `qtype`."""
        with self.lock:
            return self.queries.count((name.lower().rstrip("."), qtype))

    def txt(self, name, *records):
        """Sets the TXT records of `name` (each one string, split as DNS
        needs); none makes the name exist without TXT records."""
        with self.lock:
            self.txts[name.lower().rstrip(".")] = list(records)

    def stop(self):
        self._stopped.set()
        self.server.stop()
