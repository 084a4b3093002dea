"""A relay domain's next hop may be a mail store that speaks LMTP (RFC
2033), here Debian's Dovecot: recipients are checked with it at RCPT (the
call-ahead speaks LHLO too), each accepted recipient gets its own answer
after the message, and a mailbox that cannot take the message now is
retried alone, so the others are not delivered twice."""

import json
import os
import pwd
import shutil
import smtplib
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import Postern, free_port, wait_port, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


class Dovecot:
    """Dovecot's LMTP service on loopback, mailboxes alice@ and bob@ at
    relay.test in Maildirs under a temporary directory."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        # Dovecot does not write mailboxes as root: the package's own user.
        owner = pwd.getpwnam("dovecot")
        self.uid, self.gid = owner.pw_uid, owner.pw_gid
        (root / "mail").mkdir()
        os.chown(root / "mail", self.uid, self.gid)
        users = "".join(
            f"{u}@relay.test:::::{root / 'mail' / u}::\n" for u in ("alice", "bob"))
        (root / "users").write_text(users)
        (root / "dovecot.conf").write_text(f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
mail_location = maildir:~/Maildir
mail_uid = {self.uid}
mail_gid = {self.gid}
first_valid_uid = 0
first_valid_gid = 0
default_internal_user = root
default_internal_group = root
default_login_user = root
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
""")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def mailbox(self, user):
        """The messages delivered to user@relay.test."""
        new = self.root / "mail" / user / "Maildir" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def log(self):
        path = self.root / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def dovecot():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        os.chmod(root, 0o755)
        store = Dovecot(root)
        yield store
        store.stop()


@pytest.fixture
def postern_lmtp(dovecot):
    with tempfile.TemporaryDirectory() as d:
        # The relay domain's route goes to Dovecot over LMTP; recipients
        # are checked by asking it (the default call-ahead).
        p = Postern(d, dovecot.port, route_every_domain=False,
                    route_config='protocol = "lmtp"')
        p.start()
        yield p
        p.stop()


def send(p, rcpts, subject):
    with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
        s.ehlo("mx.sender.example")
        s.mail("someone@sender.example")
        answers = {r: s.rcpt(r) for r in rcpts}
        accepted = [r for r, (code, _) in answers.items() if code == 250]
        if accepted:
            code, text = s.data(f"Subject: {subject}\r\n\r\nhello over LMTP\r\n".encode())
            assert code == 250, (code, text)
    return answers


def test_relay_mail_reaches_each_mailbox_over_lmtp_and_unknown_users_are_refused_at_rcpt(dovecot, postern_lmtp):
    answers = send(postern_lmtp, ["alice@relay.test", "nobody@relay.test", "bob@relay.test"], "lmtp one")
    # The call-ahead asked Dovecot over LMTP: it knows no nobody@.
    code, text = answers["nobody@relay.test"]
    assert code == 550 and text.startswith(b"5.1.1"), answers
    for user in ("alice", "bob"):
        got = wait_until(lambda: dovecot.mailbox(user), timeout=30, what=f"{user}'s copy")
        assert len(got) == 1
        assert b"Subject: lmtp one" in got[0]
        assert b"by postern.test (Postern)" in got[0]
    assert dovecot.mailbox("nobody") == []


def test_a_mailbox_that_cannot_take_the_message_now_is_retried_alone(dovecot, postern_lmtp):
    # bob's home exists but Dovecot's user cannot write in it: Dovecot
    # accepts bob at RCPT and answers 4xx for him alone after the message.
    bob = dovecot.root / "mail" / "bob"
    bob.mkdir()
    os.chown(bob, 0, 0)
    os.chmod(bob, 0o755)
    send(postern_lmtp, ["alice@relay.test", "bob@relay.test"], "lmtp two")
    wait_until(lambda: dovecot.mailbox("alice"), timeout=30, what="alice's copy")

    def bob_deferred():
        events = json.loads(postern_lmtp.cli("events", "--json").stdout)
        return any(e["event"] == "deferred" and e["recipient"] == "bob@relay.test" for e in events)
    wait_until(bob_deferred, timeout=30, what="bob's deferral")
    assert dovecot.mailbox("bob") == []

    # Once the mailbox can be written, the retry delivers to bob, and to
    # bob only: alice keeps a single copy.
    os.chown(bob, dovecot.uid, dovecot.gid)
    got = wait_until(lambda: dovecot.mailbox("bob"), timeout=30, what="bob's copy after the retry")
    assert b"Subject: lmtp two" in got[0]
    assert len(dovecot.mailbox("alice")) == 1, dovecot.log()
