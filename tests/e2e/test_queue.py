"""The send log and the queue, as a sender and an operator use them: a
recipient whose mailbox is full is deferred (classified), shows in
`postern queue`, is retried on demand, and a message is deleted over the API
(curl) with `dropped` events; the API shows only the caller's own messages."""

import json
import smtplib
import ssl
import tempfile
import time

import pytest

from conftest import Postern, curl


@pytest.fixture
def slow_retry(sink):
    # An hour between attempts: only `queue retry` brings a message back.
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port, queue_config='retry_initial = "1h"\nretry_max = "4h"').start()
        p.read_admin_key()
        yield p
        p.stop()


def send(p, rcpt, subject, key=None):
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.login("apikey", key or p.admin_key)
        s.sendmail("sender@example.org", [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def events(p, *args):
    return json.loads(p.cli("events", "--json", *args).stdout)


def wait_events(p, count, *args, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = events(p, *args)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"wanted {count} events for {args}: {events(p, *args)}")


def test_deferred_mail_is_listed_retried_and_deleted(slow_retry, sink):
    p = slow_retry
    send(p, "defer-a@example.net", "first")
    send(p, "defer-b@example.com", "second")
    deferred = wait_events(p, 2, "--kind", "deferred")
    assert {e["recipient"] for e in deferred} == {"defer-a@example.net", "defer-b@example.com"}
    d = deferred[0]
    assert d["status"] == "4.2.2"
    assert d["classification"] == "mailbox_full"
    assert d["attempt"] == 1
    assert d["remote_ip"] == "127.0.0.1"
    assert "452" in d["detail"]

    queued = json.loads(p.cli("queue", "list", "--json").stdout)
    assert len(queued) == 2
    by_rcpt = {m["recipients"][0]["email"]: m for m in queued}
    a, b = by_rcpt["defer-a@example.net"], by_rcpt["defer-b@example.com"]
    assert a["recipients"][0]["status"] == "queued"
    assert a["recipients"][0]["attempts"] == 1
    assert "Mailbox full" in a["recipients"][0]["last_reply"]
    only_net = json.loads(p.cli("queue", "list", "--domain", "example.net", "--json").stdout)
    assert [m["message_id"] for m in only_net] == [a["message_id"]]
    shown = json.loads(p.cli("queue", "show", a["message_id"], "--json").stdout)
    assert shown["from"] == "sender@example.org"

    # The mailbox has room again; an operator retries one message now.
    sink.handler.defer = False
    out = p.cli("queue", "retry", a["message_id"]).stdout
    assert "1 recipient(s) due now" in out
    sink.wait_for(1, timeout=15)
    assert sink.messages[0]["rcpt_tos"] == ["defer-a@example.net"]
    history = wait_events(p, 3, "--recipient", "DEFER-A@example.net")
    assert [e["event"] for e in history] == ["processed", "deferred", "delivered"]
    assert history[2]["attempt"] == 2
    # The other message was not made due: still queued after one attempt,
    # its next attempt where its backoff put it (an hour on), so nothing
    # of it can reach the sink during the test.
    b_rcpt = b["recipients"][0]
    assert b_rcpt["next_attempt"] is not None
    still = {m["message_id"]: m for m in json.loads(p.cli("queue", "list", "--json").stdout)}
    assert list(still) == [b["message_id"]], still
    after = still[b["message_id"]]["recipients"][0]
    assert (after["status"], after["attempts"], after["next_attempt"]) == ("queued", 1, b_rcpt["next_attempt"]), after
    assert len(sink.messages) == 1, "the other message was not retried"

    # Over the API (curl): the queue, the message, then delete it.
    code, body = curl(p, "GET", "/v3/queue")
    assert code == 200 and [m["message_id"] for m in body["messages"]] == [b["message_id"]]
    code, body = curl(p, "GET", f"/v3/queue/{b['message_id']}")
    assert code == 200 and body["recipients"][0]["attempts"] == 1

    # Another account sees none of it, and cannot delete it.
    p.cli("account", "create", "other")
    other = json.loads(p.cli("key", "create", "--account", "other", "--json").stdout)["key"]
    code, body = curl(p, "GET", "/v3/queue", key=other)
    assert code == 200 and body["messages"] == []
    code, _ = curl(p, "DELETE", f"/v3/queue/{b['message_id']}", key=other)
    assert code == 404
    code, _ = curl(p, "GET", f"/v3/messages/{b['message_id']}", key=other)
    assert code == 404

    code, _ = curl(p, "DELETE", f"/v3/queue/{b['message_id']}")
    assert code == 204
    assert json.loads(p.cli("queue", "list", "--json").stdout) == []
    dropped = events(p, "--kind", "dropped")
    assert [e["recipient"] for e in dropped] == ["defer-b@example.com"]
    assert "deleted from the queue" in dropped[0]["detail"]

    # The send log over the API: by recipient, and one message's story.
    code, body = curl(p, "GET", "/v3/events?to_email=defer-a@example.net")
    assert code == 200
    assert [e["event"] for e in body["events"]] == ["processed", "deferred", "delivered"]
    code, body = curl(p, "GET", f"/v3/events?event=dropped,bounce")
    assert [e["event"] for e in body["events"]] == ["dropped"]
    code, body = curl(p, "GET", f"/v3/messages/{a['message_id']}")
    assert code == 200
    assert body["status"] == "delivered"
    assert body["from_email"] == "sender@example.org"
    assert [e["event_name"] for e in body["events"]] == ["processed", "deferred", "delivered"]
    code, body = curl(p, "GET", "/v3/events?event=nonsense")
    assert code == 400

    # Both levers are in the audit log.
    audit = json.loads(p.cli("audit", "--kind", "queue.", "--json").stdout)
    assert {e["kind"] for e in audit} == {"queue.retry", "queue.delete"}


def key(p, account, scopes):
    return json.loads(p.cli("key", "create", "--account", account, "--scopes", scopes, "--json").stdout)["key"]


def deferred(p, rcpt, key=None):
    """Sends a message the sink defers; its id once the deferral is logged."""
    send(p, rcpt, "deferred", key)
    return wait_events(p, 1, "--recipient", rcpt, "--kind", "deferred")[0]["message_id"]


def next_attempt(p, message_id):
    """When the message's waiting recipient is next due (queue show)."""
    shown = json.loads(p.cli("queue", "show", message_id, "--json").stdout)
    return shown["recipients"][0]["next_attempt"]


# retry_initial is an hour (slow_retry): a delivery within DELIVERED_WITHIN
# seconds of a retry can only be that retry. The API wakes the scheduler at
# once; the CLI writes the store, which the scheduler reads within its
# two-second idle poll.
DELIVERED_WITHIN = 10


def test_retry_over_the_api_needs_the_scope_and_the_callers_own_message(slow_retry, sink):
    p = slow_retry
    first = deferred(p, "defer-one@example.net")
    second = deferred(p, "defer-two@example.net")
    due = {m: next_attempt(p, m) for m in (first, second)}
    sink.handler.defer = False

    # Without queue.update: 403, and nothing becomes due.
    reader = key(p, "admin", "queue.read,queue.delete,messages.read,mail.send")
    for path in (f"/v3/queue/{first}/retry", "/v3/queue/retry"):
        code, body = curl(p, "POST", path, key=reader)
        assert code == 403 and "queue.update" in body["errors"][0]["message"], (path, code, body)
    # Another tenant, with the scope: the message is not found (exactly as
    # an id that never existed), and retrying "all" touches only its own.
    p.cli("account", "create", "other")
    other = key(p, "other", "queue.update,queue.read")
    code, body = curl(p, "POST", f"/v3/queue/{first}/retry", key=other)
    assert (code, body) == curl(p, "POST", "/v3/queue/no-such-message/retry", key=other)
    assert code == 404, body
    assert curl(p, "POST", "/v3/queue/retry", key=other) == (200, {"recipients": 0})
    assert {m: next_attempt(p, m) for m in due} == due, "nothing was made due"

    # With the scope, one message: due now and delivered at once.
    updater = key(p, "admin", "queue.update")
    assert curl(p, "POST", f"/v3/queue/{first}/retry", key=updater) == (200, {"recipients": 1})
    sink.wait_for(1, timeout=DELIVERED_WITHIN)
    assert sink.messages[0]["rcpt_tos"] == ["defer-one@example.net"]
    assert next_attempt(p, second) == due[second], "only the one message was retried"
    # Then everything of the caller's.
    assert curl(p, "POST", "/v3/queue/retry", key=updater) == (200, {"recipients": 1})
    sink.wait_for(2, timeout=DELIVERED_WITHIN)
    assert sink.messages[1]["rcpt_tos"] == ["defer-two@example.net"]
    assert json.loads(p.cli("queue", "list", "--json").stdout) == []


def test_cli_retry_all_optionally_for_one_account(slow_retry, sink):
    p = slow_retry
    p.cli("account", "create", "other")
    mine = deferred(p, "defer-mine@example.net")
    theirs = deferred(p, "defer-theirs@example.net", key(p, "other", "mail.send"))
    due_mine = next_attempt(p, mine)
    sink.handler.defer = False

    out = p.cli("queue", "retry", "--all", "--account", "other").stdout
    assert "1 recipient(s) due now" in out
    sink.wait_for(1, timeout=DELIVERED_WITHIN)
    assert sink.messages[0]["rcpt_tos"] == ["defer-theirs@example.net"]
    assert [e["message_id"] for e in wait_events(p, 1, "--kind", "delivered")] == [theirs]
    assert next_attempt(p, mine) == due_mine, "--account narrowed it to other's mail"

    out = p.cli("queue", "retry", "--all").stdout
    assert "1 recipient(s) due now" in out
    sink.wait_for(2, timeout=DELIVERED_WITHIN)
    assert sink.messages[1]["rcpt_tos"] == ["defer-mine@example.net"]
    # Neither an id nor --all: refused rather than retrying everything.
    refused = p.cli("queue", "retry", check=False)
    assert refused.returncode != 0 and "--all" in refused.stderr
    retries = [e["detail"] for e in json.loads(p.cli("audit", "--kind", "queue.retry", "--json").stdout)]
    assert any("all account=other" in d for d in retries) and any("all account=*" in d for d in retries), retries
