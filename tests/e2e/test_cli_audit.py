"""README, "Command line": every mutating command writes an audit entry
(actor `cli:$USER`). The commands are read from the CLI's own help,
recursively, so a command added later is either listed here as read-only
(with the reason) or run below with valid arguments; one that is neither
fails the test. Each run must add exactly the audit entries named for it,
all with the actor `cli:` and the user's name from $USER."""

import json
import os
import re
import smtplib
import subprocess
import tempfile

import pyotp
from dnslib.server import DNSServer

from conftest import BIN, Postern, free_port, link_in, wait_until
from test_dkim import MutableZone

# The commands that change nothing, and why they are not audited.
READ_ONLY = {
    ("serve",): "the server; what it changes is audited where it happens (API, AUTH, first-start key)",
    ("check-config",): "reads a configuration file and opens no store",
    ("key", "list"): "lists keys",
    ("account", "list"): "lists accounts",
    ("subuser", "list"): "lists subusers",
    ("ip-access", "list"): "lists an allowlist",
    ("audit",): "reads the audit log",
    ("audit", "verify"): "recomputes the hash chain",
    # It writes `audit.head`, but only the head the chain already has: an
    # entry recording that would move the head it records.
    ("audit", "anchor"): "prints (and records) the chain's current head",
    ("events",): "reads the send log",
    ("domain", "list"): "lists domains",
    ("domain", "show"): "prints a domain's records",
    ("sender", "list"): "lists single senders",
    ("webhook", "show"): "prints a webhook's settings",
    ("queue", "list"): "lists the queue",
    ("queue", "show"): "prints one queued message",
    ("quarantine", "list"): "lists held messages",
    ("quarantine", "show"): "prints one held message",
    ("reports", "list"): "lists reports received",
    ("reports", "show"): "prints one received report",
}

USER = "auditor"
ACTOR = f"cli:{USER}"
PASSWORD = "violet-harbour-lantern-42"

# The commands in a clap help text: two spaces, the name, then its
# description (continuation lines are indented further).
COMMAND_LINE = re.compile(r"^  ([a-z][a-z0-9-]*)(?:\s|$)")


def commands(path=()):
    """Every command `postern` runs, as the tuple of its words, from its
    `--help` texts: a command with subcommands counts itself too when its
    subcommand is optional (`Usage: ... [COMMAND]`, as `audit` has)."""
    text = subprocess.run([str(BIN), *path, "--help"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    lines = text.splitlines()
    subs = []
    if "Commands:" in lines:
        for line in lines[lines.index("Commands:") + 1:]:
            if not line.strip():
                break
            m = COMMAND_LINE.match(line)
            if m and m.group(1) != "help":
                subs.append(m.group(1))
    usage = next(line for line in lines if line.startswith("Usage:"))
    found = [path] if path and (not subs or "[COMMAND]" in usage) else []
    for sub in subs:
        found += commands(path + (sub,))
    return found


class AuditedCli:
    """Runs CLI commands as user $USER=auditor and checks the audit
    entries each one adds."""

    def __init__(self, p):
        self.p = p
        self.env = {**os.environ, "USER": USER}
        self.covered = set()

    def entries(self):
        return json.loads(self.p.cli("audit", "--json", env=self.env).stdout)

    def __call__(self, path, *args, kinds, input=None):
        """Runs `postern PATH ARGS`; exactly the entries `kinds`, in that
        order, must be new in the audit log afterwards. Returns the
        command's standard output."""
        last = max(e["seq"] for e in self.entries())
        out = self.p.cli(*path, *args, input=input, env=self.env, check=False)
        assert out.returncode == 0, (path, args, out.stderr)
        new = [(e["kind"], e["actor"]) for e in self.entries() if e["seq"] > last]
        assert new == [(k, ACTOR) for k in kinds], (path, args, new)
        self.covered.add(path)
        return out.stdout


def test_every_mutating_command_is_audited_with_the_cli_user(sink):
    listed = commands()
    assert ("key", "create") in listed and ("audit",) in listed, listed
    stale = set(READ_ONLY) - set(listed)
    assert not stale, f"read-only commands the CLI no longer has: {stale}"

    zone = MutableZone()
    dns_port = free_port()
    dns = DNSServer(zone, port=dns_port, address="127.0.0.1")
    dns.start_thread()
    config = f"""
[dns]
nameservers = ["127.0.0.1:{dns_port}"]

[senders]
verification_resend_interval = "0s"

[webhooks]
allow_plain_http = true
allow_private_destinations = true

[[ip_pool]]
name = "pool1"
[[ip_pool.address]]
ip = "127.0.0.3"
ehlo_name = "three.postern.test"
"""
    with tempfile.TemporaryDirectory() as d:
        # A running server: the commands work beside it (README: "also
        # while it runs"), and it delivers the verification mails.
        p = Postern(d, sink.port, extra_config=config,
                    # The sink defers "defer-" recipients at RCPT, which a
                    # call-ahead would pass on to the client.
                    relay_config='recipient_check = "any"').start()
        try:
            p.read_admin_key()
            run = AuditedCli(p)

            run(("account", "create"), "shop", kinds=["account.create"])
            run(("account", "disable"), "shop", kinds=["account.disable"])
            run(("account", "enable"), "shop", kinds=["account.enable"])
            run(("account", "password"), "shop", input=PASSWORD + "\n", kinds=["account.password"])
            run(("account", "password-auth"), "shop", "on", kinds=["account.password_auth"])
            run(("account", "cram-md5"), "shop", "on", input=PASSWORD + "\n", kinds=["account.cram_md5"])
            run(("account", "limit"), "shop", "--messages-per-hour", "100", kinds=["account.limit"])
            run(("account", "sender-alignment"), "shop", "relaxed", kinds=["account.sender_alignment"])
            run(("account", "ip-pool"), "shop", "pool1", kinds=["account.ip_pool"])
            run(("account", "require-2fa"), "shop", "on", kinds=["account.require_2fa"])
            run(("subuser", "create"), "billing", "--account", "shop", kinds=["subuser.create"])
            run(("ip-access", "add"), "shop", "127.0.0.0/8", kinds=["ip_access.add"])
            run(("ip-access", "remove"), "shop", "127.0.0.0/8", kinds=["ip_access.remove"])

            secret = json.loads(run(("totp", "enroll"), "shop", "--json", kinds=["totp.enroll"]))["secret"]
            # The first accepted code confirms the enrolment: the attempt
            # and the confirmation are two entries.
            run(("totp", "verify"), "shop", pyotp.TOTP(secret).now(),
                kinds=["totp.verify.success", "totp.confirm"])
            run(("totp", "disable"), "shop", kinds=["totp.disable"])

            key = json.loads(run(("key", "create"), "--account", "shop", "--json", kinds=["key.create"]))
            run(("key", "revoke"), key["id"], kinds=["key.revoke"])

            run(("domain", "add"), "example.org", "--account", "shop", "--json", kinds=["domain.add"])
            run(("domain", "return-path"), "example.org", "on", kinds=["domain.return_path"])
            run(("domain", "verify"), "example.org", "--operator", kinds=["domain.verify.operator"])
            run(("domain", "remove"), "example.org", kinds=["domain.remove"])
            # `domain verify` over DNS: verifying retires the other
            # accounts' claims, and a published rotation is promoted; each
            # change has its entry.
            claim = json.loads(run(("domain", "add"), "example.net", "--account", "shop", "--json",
                                   kinds=["domain.add"]))
            run(("domain", "add"), "example.net", "--account", "admin", kinds=["domain.add"])
            zone.records = [r for r in claim["records"] if r["required"]]
            run(("domain", "verify"), "example.net", "--account", "shop",
                kinds=["domain.verify", "domain.claim.retired"])
            rotated = json.loads(run(("domain", "rotate"), "example.net", "--json", kinds=["domain.rotate"]))
            zone.records = [r for r in rotated["records"] if r["required"]]
            run(("domain", "verify"), "example.net", kinds=["domain.rotate.promote"])

            carol = json.loads(run(("sender", "add"), "carol@example.com", "--account", "shop", "--json",
                                   kinds=["sender.add"]))["id"]
            # The first link has arrived before the resend, so the second
            # mail to arrive carries the new token.
            link_in(sink, "carol@example.com", 1)
            run(("sender", "resend"), str(carol), kinds=["sender.resend"])
            token = link_in(sink, "carol@example.com", 2).rsplit("/", 1)[1]
            # A token may begin with "-" (base64url): after "--" it is
            # not taken for an option.
            run(("sender", "confirm"), "--", token, kinds=["sender.verify"])
            # The sink defers "defer-" recipients, so this one's
            # verification mail stays queued for the queue commands.
            dave = json.loads(run(("sender", "add"), "defer-dave@example.net", "--account", "shop", "--json",
                                  kinds=["sender.add"]))["id"]
            run(("sender", "verify"), str(dave), "--operator", kinds=["sender.verify.operator"])
            run(("sender", "remove"), str(carol), kinds=["sender.remove"])

            run(("webhook", "set"), "shop", "--url", "http://127.0.0.1:9/events", kinds=["webhook.update"])

            queued = json.loads(p.cli("queue", "list", "--json").stdout)
            (message,) = [m for m in queued
                          if any(r["email"] == "defer-dave@example.net" for r in m["recipients"])]
            run(("queue", "retry"), message["message_id"], kinds=["queue.retry"])
            run(("queue", "retry"), "--all", "--account", "shop", kinds=["queue.retry"])
            run(("queue", "delete"), message["message_id"], kinds=["queue.delete"])

            # Inbound mail the sink defers stays queued for the quarantine.
            with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=30) as s:
                s.sendmail("someone@outside.example", ["defer-held@relay.test"], b"Subject: q\r\n\r\nx\r\n")
            inbound = wait_until(lambda: [e["message_id"] for e in json.loads(p.cli("events", "--json").stdout)
                                          if e["event"] == "deferred" and e["recipient"] == "defer-held@relay.test"],
                                 what="the inbound message deferred")[0]

            def hold():
                # Refused (and not audited) while a delivery attempt, every
                # second or two here, holds the message.
                try:
                    run(("quarantine", "hold-queued"), inbound, "--reason", "audit test", kinds=["quarantine.hold"])
                    return True
                except AssertionError as e:
                    if "in progress" in str(e):
                        return False
                    raise
            wait_until(hold, what="hold-queued")
            run(("quarantine", "release"), inbound, kinds=["quarantine.release"])
            wait_until(hold, what="hold-queued again")
            run(("quarantine", "delete"), inbound, kinds=["quarantine.delete"])
            # A pass of the reports (nothing recorded here: mx mail is not
            # checked in this server) is audited all the same.
            run(("reports", "send-now"), kinds=["reports.send"])
        finally:
            p.stop()
            dns.stop()

    # Every command is either read-only or was run above: a new command
    # that is neither fails here, audited or not.
    unclassified = set(listed) - set(READ_ONLY) - run.covered
    assert not unclassified, f"commands neither read-only nor checked for their audit entries: {unclassified}"
