"""Spam scoring by rspamd (`[content.rspamd]`) on the mx listener:
Debian's rspamd runs on loopback with a minimal configuration of the
test's own (one normal worker, no Redis, no controller, no network
lists) and the rules in rspamd/postern_test.lua, with which a message
chooses its own score. smtplib is the sending MTA, the sink the internal
server behind Postern."""

import email
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import DnsZone, Postern, free_port, metric, quarantined, send_mx, wait_until

RULES = Path(__file__).resolve().parent / "rspamd" / "postern_test.lua"


class Rspamd:
    """`rspamd -f` on 127.0.0.1 with its configuration, state and log in
    `workdir`. Its resolver points at a loopback port nothing serves (no
    rule here asks DNS; nothing may leave the machine), and its list of
    public suffixes is a handful of lines: the full list takes it some 15 s
    to compile at every start."""

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.port = free_port()
        self.log = self.dir / "rspamd.log"
        self.proc = None
        (self.dir / "tld.dat").write_text("test\ncom\nnet\norg\n")
        (self.dir / "rspamd.conf").write_text(f"""
options {{
  pidfile = "{self.dir}/rspamd.pid";
  filters = "";
  url_tld = "{self.dir}/tld.dat";
  cache_file = "{self.dir}/symbols.cache";
  hs_cache_dir = "{self.dir}/";
  control_socket = "{self.dir}/rspamd.sock mode=0600";
  dns {{ nameserver = ["127.0.0.1:{free_port()}"]; timeout = 0.2s; retransmits = 1; }}
}}
logging {{ type = "file"; filename = "{self.log}"; level = "info"; }}
lua = "{RULES}";
worker "normal" {{ bind_socket = "127.0.0.1:{self.port}"; count = 1; }}
""")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def ping(self):
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                return r.read().strip() == b"pong"
        except OSError:
            return False

    def start(self):
        binary = shutil.which("rspamd") or "/usr/bin/rspamd"
        if not os.path.exists(binary):
            pytest.fail("rspamd is not installed (scripts/test.sh installs Debian's)")
        args = [binary, "-f", "-c", str(self.dir / "rspamd.conf")]
        if os.geteuid() == 0:
            # Its workers refuse to run as root unless told to (-i); no
            # other user owns the test's directory.
            args += ["-u", "root", "-g", "root", "-i"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self.ping, timeout=30, what="rspamd answering /ping")
        except TimeoutError:
            self.stop()
            raise AssertionError(f"rspamd did not start:\n{self.log.read_text()[-3000:]}") from None
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def rspamd():
    with tempfile.TemporaryDirectory() as d:
        r = Rspamd(d).start()
        yield r
        r.stop()


@contextmanager
def gateway(sink, rspamd, extra="", content="", lenient=""):
    """A Postern scoring mx mail with `rspamd`: tagged at 5, quarantined
    at 10, refused at 15; lenient.test refuses only at 30; mail for
    unchecked.test is accepted when rspamd does not answer. More
    configuration: `extra` at the top level, `content` at the end (tables
    under [content]), `lenient` in lenient.test's [[content.domain]]."""
    with tempfile.TemporaryDirectory() as d:
        p = Postern(
            d, sink.port,
            relay_domains=("relay.test", "lenient.test", "unchecked.test"),
            relay_config='recipient_check = "any"',
            extra_config=f"""
{extra}

[content]
on_error = "defer"

[content.rspamd]
url = "{rspamd.url}"
timeout = "10s"
tag_score = 5.0
quarantine_score = 10.0
reject_score = 15.0

[[content.domain]]
domain = "lenient.test"
spam_reject_score = 30.0
{lenient}

[[content.domain]]
domain = "unchecked.test"
on_error = "accept"

{content}
""",
        ).start()
        p.read_admin_key()
        try:
            yield p
        finally:
            p.stop()


def message(body, extra_headers=""):
    return (
        "From: sender@sender.test\r\nTo: user@relay.test\r\nSubject: an offer\r\n"
        f"{extra_headers}\r\n{body}\r\n"
    ).encode()


def fields(data, name):
    """Every value of header field `name` in a message as it arrived,
    unfolded."""
    msg = email.message_from_bytes(data)
    return [" ".join(v.split()) for v in msg.get_all(name, [])]


def test_scores_are_marked_and_tag_quarantine_or_refuse_by_the_thresholds(rspamd, sink):
    with gateway(sink, rspamd) as p:
        # Under the tag threshold: delivered with its score, not tagged.
        code, text = send_mx(p, message("Lunch at noon? postern-test-score=1.0"))
        assert code == 250, text
        [m] = sink.wait_for(1)
        assert fields(m["data"], "X-Spam-Score") == ["1.00"]
        assert fields(m["data"], "X-Spam-Status") == ["No, score=1.00 action=accept"]
        assert fields(m["data"], "X-Spam-Symbols") == ["POSTERN_TEST_SCORE(1.00)"]
        assert fields(m["data"], "X-Postern-Content") == []

        # At or above 5: tagged for the internal server to file.
        code, text = send_mx(p, message("Cheap watches postern-test-score=7.5"))
        assert code == 250, text
        m = sink.wait_for(2)[1]
        assert fields(m["data"], "X-Spam-Score") == ["7.50"]
        assert fields(m["data"], "X-Spam-Status") == ["Yes, score=7.50 action=tag"]
        assert fields(m["data"], "X-Spam-Symbols") == ["POSTERN_TEST_SCORE(7.50)"]
        assert fields(m["data"], "X-Postern-Content") == ["tag; spam score 7.50"]
        # The body arrived as sent.
        assert m["data"].endswith(b"\r\n\r\nCheap watches postern-test-score=7.5\r\n")

        # At or above 10: held, with the score on the held copy.
        code, text = send_mx(p, message("Claim your prize postern-test-score=12"))
        assert code == 250, text
        [held] = quarantined(p)
        assert held["reason"].startswith("spam score 12.00"), held
        shown = json.loads(p.cli("quarantine", "show", held["id"], "--json").stdout)
        headers = {h["name"]: h["value"] for h in shown["preview"]["headers"]}
        assert headers["X-Spam-Score"] == "12.00"
        assert headers["X-Spam-Status"].startswith("Yes, score=12.00 action=quarantine")

        # At or above 15: refused with the score.
        code, text = send_mx(p, message("Wire the fee postern-test-score=20"))
        assert (code, text) == (550, "5.7.1 spam score 20.00")

        # lenient.test refuses only at 30: the same message is held.
        code, text = send_mx(p, message("Wire the fee postern-test-score=20"), rcpts=("user@lenient.test",))
        assert code == 250, text
        assert len(quarantined(p)) == 2
        # Held and refused mail never reached the queue or the sink.
        assert json.loads(p.cli("queue", "list", "--json").stdout) == []
        assert len(sink.messages) == 2

        # Every score in the histogram: 1, 7.5, 12, 20, 20; every scan
        # timed; every outcome counted.
        assert metric(p, "postern_spam_score_count") == 5
        assert metric(p, "postern_spam_score_sum") == 60.5
        assert metric(p, "postern_spam_score_bucket", le="10") == 2
        assert metric(p, "postern_spam_score_bucket", le="15") == 3
        assert metric(p, "postern_spam_scan_seconds_count") == 5
        for outcome, count in (("clean", 1), ("tag", 1), ("quarantine", 2), ("reject", 1)):
            assert metric(p, "postern_content_findings_total", check="spam", outcome=outcome) == count, outcome

        # The refusal is recorded: processed with the finding, dropped.
        events = json.loads(p.cli("events", "--json").stdout)
        [dropped] = [e for e in events if e["event"] == "dropped"]
        assert "spam score 20.00" in dropped["detail"], dropped
        [processed] = [e for e in events if e["event"] == "processed" and e["message_id"] == dropped["message_id"]]
        assert "content: spam=reject(spam score 20.00)" in processed["detail"], processed


def test_rspamd_is_told_the_session(rspamd, sink):
    """The client address, HELO name, envelope sender and recipients reach
    rspamd as its protocol's request headers: its rule scores the number
    of recipients it was told of, or 100 when anything else differs."""
    with gateway(sink, rspamd) as p:
        code, text = send_mx(p, message("postern-test-envelope"), mail_from="envelope@sender.test",
                             rcpts=("a@relay.test", "b@relay.test"), helo="mta.sender.test")
        assert code == 250, text
        [m] = sink.wait_for(1)
        assert fields(m["data"], "X-Spam-Symbols") == ["POSTERN_TEST_ENVELOPE(2.00)"]


def test_forged_spam_fields_are_removed(rspamd, sink):
    forged = (
        "X-Spam-Score: -50.00\r\n"
        "X-Spam-Status: No, score=-50.00 action=accept\r\n"
        "X-Spam-Flag: NO\r\n"
        "x-spamd-result: default: False [-50.00 / 15.00]\r\n"
        "X-Spam-Symbols: WHITELISTED(-50.00)\r\n"
        "X-Postern-Content: accept\r\n"
    )
    with gateway(sink, rspamd) as p:
        code, text = send_mx(p, message("Hello postern-test-score=6", forged))
        assert code == 250, text
        [m] = sink.wait_for(1)
        # Only Postern's own, with rspamd's score.
        assert fields(m["data"], "X-Spam-Score") == ["6.00"]
        assert fields(m["data"], "X-Spam-Status") == ["Yes, score=6.00 action=tag"]
        assert fields(m["data"], "X-Spam-Symbols") == ["POSTERN_TEST_SCORE(6.00)"]
        assert fields(m["data"], "X-Postern-Content") == ["tag; spam score 6.00"]
        assert fields(m["data"], "X-Spam-Flag") == []
        assert fields(m["data"], "X-Spamd-Result") == []
        # The rest of the message is untouched.
        assert fields(m["data"], "Subject") == ["an offer"]
        assert metric(p, "postern_content_forged_fields_removed_total") == 6


def test_rspamd_down_defers_unless_the_domain_accepts_unchecked(rspamd, sink):
    with gateway(sink, rspamd) as p:
        rspamd.stop()
        code, text = send_mx(p, message("postern-test-score=20"))
        assert code == 451, text
        assert text.startswith("4.3.0 Message not checked (spam: rspamd: "), text
        assert "Connection refused" in text
        assert json.loads(p.cli("queue", "list", "--json").stdout) == []
        assert metric(p, "postern_spam_scan_failures_total", reason="error") == 1

        # unchecked.test takes its mail unchecked: delivered, no score.
        code, text = send_mx(p, message("postern-test-score=20"), rcpts=("user@unchecked.test",))
        assert code == 250, text
        [m] = sink.wait_for(1)
        assert fields(m["data"], "X-Spam-Score") == []

        # rspamd back: scanned again.
        rspamd.start()
        code, text = send_mx(p, message("postern-test-score=20"))
        assert (code, text) == (550, "5.7.1 spam score 20.00")



def test_with_uri_lists_too_the_strictest_finding_wins(rspamd, sink):
    """Both checks on one message, side by side: a listed URL (only
    tagged for lenient.test, refused elsewhere) and a spam score."""
    zone = DnsZone()
    zone.set("listed.test.uribl.test", "127.0.0.2")
    dns = f'[dns]\nnameservers = ["127.0.0.1:{zone.port}"]\n'
    uri = '[[content.uribl]]\nzone = "uribl.test"\n'
    try:
        with gateway(sink, rspamd, extra=dns, content=uri, lenient='uri_listed = "tag"') as p:
            # Quarantine by score, reject by URL: refused for the URL.
            code, text = send_mx(p, message("http://listed.test/ postern-test-score=12"))
            assert (code, text) == (550, "5.7.1 URL domain listed.test listed by uribl.test")
            # For lenient.test the URL only tags: the score's quarantine wins.
            code, text = send_mx(p, message("http://listed.test/ postern-test-score=12"),
                                 rcpts=("user@lenient.test",))
            assert code == 250, text
            [held] = quarantined(p)
            assert held["reason"].startswith("spam score 12.00"), held
            # Both tag: both reasons, in the order of the checks.
            code, text = send_mx(p, message("http://listed.test/ postern-test-score=7"),
                                 rcpts=("user@lenient.test",))
            assert code == 250, text
            [m] = sink.wait_for(1)
            assert fields(m["data"], "X-Postern-Content") == [
                "tag; URL domain listed.test listed by uribl.test; spam score 7.00"]
            assert fields(m["data"], "X-Spam-Score") == ["7.00"]
    finally:
        zone.stop()
