"""Durability means fsync before `250`: every `250` to the end of DATA and
every `202` from POST /v3/mail/send is written to the client only after the
store's file holding the message was synced to disk.

`kill -9` (test_crash.py) leaves the page cache intact, so it cannot tell a
synced commit from an unsynced one; this test watches the syscalls instead.
The server runs under strace, which stops each thread at every traced
syscall's entry and exit until it has written the line for it, all into one
file. A reply that comes after an fsync returned is therefore logged after
that fsync's return, and the order of the lines is the order to check:

- the message's bytes (a unique token in its Subject) are written to a file
  in the data directory (the SQLite WAL);
- then that file is synced (fsync or fdatasync returning 0, started after
  the write returned);
- and only then is the reply naming the message's id written to the client.

The companion test runs the same check with `store.synchronous` set to
"off" and "normal" (no sync at commit) and requires it to report every
message: the check can tell.
"""

import re
import shutil
import smtplib
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from conftest import Postern, api_with_headers

SMTP_CLIENTS = 3
SMTP_MESSAGES = 4  # per client
API_CLIENTS = 2
API_MESSAGES = 3  # per client

WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg"}
SYNCS = {"fsync", "fdatasync"}
TRACED = sorted(WRITES | SYNCS)

# One strace line: pid, time, then a complete call, the start of one that
# another thread interrupted, or the rest of such a call.
LINE = re.compile(r"^(\d+)\s+\S+\s+(.*)$")
UNFINISHED = re.compile(r"^(\w+)\((.*) <unfinished \.\.\.>$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)\) += (-?\d+|\?)")
COMPLETE = re.compile(r"^(\w+)\((.*)\) += (-?\d+|\?)")
# The first argument with -yy: "10</path/file>" or "20<TCP:[a:p->b:q]>",
# followed by more arguments or by nothing (fsync).
FD = re.compile(r"^\d+<(.*?)>(?:, |$)")
TCP_LOCAL_PORT = re.compile(r"^TCP:\[[^\]]*?:(\d+)->")


class Call:
    def __init__(self, name, args, enter):
        self.name, self.args, self.enter = name, args, enter
        self.exit = None
        self.ret = None
        m = FD.match(args)
        self.target = m.group(1) if m else ""


def parse(trace_text):
    """Every traced call with the line numbers of its entry and its return."""
    calls, pending = [], {}
    for n, raw in enumerate(trace_text.splitlines()):
        m = LINE.match(raw)
        if not m:
            continue
        pid, rest = m.groups()
        if u := UNFINISHED.match(rest):
            pending[pid] = Call(u.group(1), u.group(2), n)
        elif r := RESUMED.match(rest):
            call = pending.pop(pid, None)
            if call is not None and call.name == r.group(1):
                call.args += r.group(2)
                call.exit, call.ret = n, r.group(3)
                calls.append(call)
        elif c := COMPLETE.match(rest):
            call = Call(c.group(1), c.group(2), n)
            call.exit, call.ret = n, c.group(3)
            calls.append(call)
    return calls


def data(call):
    """The written bytes as strace shows them: from the first quoted string
    (the buffer of write and sendto, the first iovec of writev and sendmsg)."""
    start = call.args.find('"')
    return call.args[start + 1:] if start >= 0 else ""


def violations(calls, data_dir, acks):
    """What breaks the rule, one line per message; `acks` holds (token, id,
    reply prefix, listener port) for every acknowledged message."""
    data_dir = str(Path(data_dir).resolve()) + "/"
    found = []
    for token, msg_id, prefix, port in acks:
        reply = next(
            (
                c for c in calls
                if c.name in WRITES
                and (p := TCP_LOCAL_PORT.match(c.target)) and int(p.group(1)) == port
                and data(c).startswith(prefix) and msg_id in c.args
            ),
            None,
        )
        if reply is None:
            found.append(f"{msg_id}: no reply {prefix!r} naming it in the trace")
            continue
        stored = [
            c for c in calls
            if c.name in WRITES and c.target.startswith(data_dir) and token in c.args
            and c.enter < reply.enter
        ]
        if not stored:
            found.append(f"{msg_id}: replied (line {reply.enter}) before its bytes reached the store")
            continue
        # One synced copy is enough: a later commit may write the same page
        # again (another message's row beside this one) and sync it later.
        synced = any(
            s.name in SYNCS and s.target == w.target and s.ret == "0"
            and w.exit < s.enter and s.exit < reply.enter
            for w in stored
            for s in calls
        )
        if not synced:
            found.append(
                f"{msg_id}: {stored[0].target} written (line {stored[0].enter}) and not "
                f"synced before the reply (line {reply.enter})"
            )
    return found


def send_smtp(p, acks, lock, errors):
    try:
        with smtplib.SMTP("127.0.0.1", p.ports["mx"], timeout=60) as s:
            s.ehlo("durable.test")
            for _ in range(SMTP_MESSAGES):
                token = uuid.uuid4().hex
                s.mail("sender@example.org")
                s.rcpt("user@relay.test")
                code, text = s.data(f"Subject: durable {token}\r\n\r\nbody\r\n".encode())
                assert code == 250, text
                msg_id = text.decode().rsplit(" ", 1)[1]
                with lock:
                    acks.append((token, msg_id, "250 ", p.ports["mx"]))
    except Exception as e:  # reported by the test, not lost in the thread
        errors.append(e)


def send_api(p, acks, lock, errors):
    try:
        for _ in range(API_MESSAGES):
            token = uuid.uuid4().hex
            status, headers, _ = api_with_headers(p, p.admin_key, "POST", "/v3/mail/send", {
                "personalizations": [{"to": [{"email": "reader@example.net"}]}],
                "from": {"email": "sender@example.org"},
                "subject": f"durable {token}",
                "content": [{"type": "text/plain", "value": "body"}],
            })
            assert status == 202, status
            with lock:
                acks.append((token, headers["X-Message-Id"], "HTTP/1.1 202", p.ports["http"]))
    except Exception as e:
        errors.append(e)


def run_traced(sink, store_config=""):
    """Starts a server under strace, sends SMTP and API mail at once from
    several clients, stops it; (parsed trace, data dir, acknowledgements)."""
    assert shutil.which("strace"), "strace is needed (scripts/test.sh installs it)"
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "strace.out"
        p = Postern(d, sink.port, extra_config=store_config)
        p.start(wrapper=[
            "strace", "-f", "-tt", "-yy", "-s", "65536", "-o", str(trace),
            "-e", "trace=" + ",".join(TRACED),
        ])
        p.read_admin_key()
        acks, lock, errors = [], threading.Lock(), []
        threads = [threading.Thread(target=send_smtp, args=(p, acks, lock, errors)) for _ in range(SMTP_CLIENTS)]
        threads += [threading.Thread(target=send_api, args=(p, acks, lock, errors)) for _ in range(API_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        p.stop()
        assert not errors, errors
        # strace writes the last lines as its tracee exits.
        return parse(trace.read_text(errors="replace")), p.data_dir, acks


def test_every_acknowledgement_follows_an_fsync_of_the_message(sink):
    calls, data_dir, acks = run_traced(sink)
    assert len(acks) == SMTP_CLIENTS * SMTP_MESSAGES + API_CLIENTS * API_MESSAGES
    assert not violations(calls, data_dir, acks)


@pytest.mark.parametrize("level", ["off", "normal"])
def test_the_check_notices_acknowledgements_without_fsync(sink, level):
    calls, data_dir, acks = run_traced(sink, f'[store]\nsynchronous = "{level}"\n')
    found = violations(calls, data_dir, acks)
    # Neither level syncs the WAL at commit (a checkpoint would, but a few
    # messages are far from SQLite's 1000-page checkpoint threshold), so
    # every message is reported, and only for the missing sync: each reply
    # and each message's bytes were still found in the trace.
    assert len(found) == len(acks), found
    assert all("not synced before the reply" in v for v in found), found
