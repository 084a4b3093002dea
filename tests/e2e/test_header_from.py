"""Strict header From (issue 10 item 3), against the vectors in
crates/postern-mailauth/tests/vectors/header-from that the Rust parser is
tested on:

- every accepted vector is read by Python's `email` (the modern
  header-registry parser, and the legacy getaddresses) as exactly the
  addresses Postern expects, so both agree on who the sender is; and those
  whose addresses are all in the verified domain are accepted end to end;
- every refused vector, submitted over SMTP (smtplib, STARTTLS + AUTH)
  by an account whose domain is verified, is refused with 550 5.7.1 and
  nothing reaches the sink;
- two From fields (RFC 5322 §3.6: exactly one) and "From :" (obsolete
  field name, §4.5) are refused; a message without From is checked on its
  envelope sender alone, as before.

The first two refused vectors are the reported forms: `<ceo@bank.example>
me@good.example` (Python reads ceo@bank.example; Postern used to verify
and sign it as good.example) and a display name only, which skipped the
check."""

import email
import email.policy
import email.utils
import inspect
import json
import re
import smtplib
import ssl
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "crates/postern-mailauth/tests/vectors/header-from"
ACCEPT = sorted((VECTORS / "accept").glob("*.from"))
REFUSE = sorted((VECTORS / "refuse").glob("*.from"))
DOMAIN = "good.example"
MAIL_FROM = f"me@{DOMAIN}"
# Vectors the SMTP session refuses before the sender check sees them: a
# NUL anywhere in a message is refused at DATA (RFC 5321 §4.5.2 has no
# place for it), with its own code.
SMTP_REFUSES_FIRST = {"29-nul": (554, "5.6.0")}


def value(path):
    """The field value: final LF dropped, inner LFs are folds (CRLF)."""
    raw = path.read_bytes()
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw.replace(b"\n", b"\r\n")


def expected(path):
    return path.with_suffix(".expect").read_text(encoding="utf-8").splitlines()


def message(from_fields, rcpt="rcpt@example.net"):
    head = b"".join(b"From:" + v + b"\r\n" for v in from_fields)
    return b"To: " + rcpt.encode() + b"\r\n" + head + b"Subject: s\r\n\r\nbody\r\n"


def submit(p, key, body, mail_from=MAIL_FROM, rcpt="rcpt@example.net"):
    """(code, text) of the reply to DATA (250 when queued)."""
    opts = ["SMTPUTF8"] if any(b >= 0x80 for b in body) else []
    with smtplib.SMTP("127.0.0.1", p.ports["submission"], timeout=30) as s:
        s.starttls(context=ssl.create_default_context(cafile=p.cert))
        s.login("apikey", key)
        try:
            s.sendmail(mail_from, [rcpt], body, mail_options=opts)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode(errors="replace")


def unquote(addr):
    """`"john"@x` and `john@x` are the same mailbox (RFC 5322 §3.4.1):
    the legacy parser keeps the quotes, Postern and the header registry
    drop them when the content is a dot-atom."""
    m = re.fullmatch(r'"([A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]+)"@(.*)', addr)
    if m and ".." not in m[1] and not m[1].startswith(".") and not m[1].endswith("."):
        return f"{m[1]}@{m[2]}"
    return addr


@pytest.mark.parametrize("path", ACCEPT, ids=lambda p: p.stem)
def test_python_reads_accepted_vectors_the_same(path):
    assert len(ACCEPT) >= 20
    # The whole message as text (UTF-8 headers are RFC 6532), so the
    # parser sees the field as any reader of the message would.
    text = message([value(path)]).decode("utf-8")
    want = expected(path)

    modern = email.message_from_string(text, policy=email.policy.default)
    field = modern["From"]
    assert [a.addr_spec for a in field.addresses] == want
    # Obsolete syntax (a "." in a display name) and non-ASCII local parts
    # are flagged, not errors; nothing else may be.
    defects = {type(d).__name__ for d in field.defects}
    assert defects <= {"ObsoleteHeaderDefect", "NonASCIILocalPartDefect"}, defects

    legacy = email.message_from_string(text)
    kwargs = {}
    # Python >= 3.11.10/3.12.6 (CVE-2023-27043) has a strict mode; use it
    # where available (the 3.11.7 here does not have it).
    if "strict" in inspect.signature(email.utils.getaddresses).parameters:
        kwargs["strict"] = True
    got = [unquote(a) for _, a in email.utils.getaddresses(legacy.get_all("From"), **kwargs)]
    assert got == [unquote(a) for a in want]


@pytest.fixture
def verified(strict):
    p = strict
    p.cli("domain", "add", DOMAIN, "--account", "admin")
    p.cli("domain", "verify", DOMAIN, "--operator")
    return p


def test_refused_vectors_end_to_end(verified, sink):
    p = verified
    assert len(REFUSE) >= 20
    # The two reported forms come first and are refused by name.
    assert REFUSE[0].stem.startswith("01-angle-addr-then-address")
    assert REFUSE[1].stem.startswith("02-display-name-only")
    failures = []
    for path in REFUSE:
        code, text = submit(p, p.admin_key, message([value(path)]))
        if path.stem in SMTP_REFUSES_FIRST:
            ok = (code, text.split(" ")[0]) == SMTP_REFUSES_FIRST[path.stem]
        else:
            ok = code == 550 and text.startswith("5.7.1")
        if not ok:
            failures.append((path.stem, code, text))
    assert failures == []
    # A sane From from the same account is accepted: the refusals are the
    # From's, not the account's.
    assert submit(p, p.admin_key, message([b" Me <me@good.example>"]))[0] == 250
    assert len(sink.wait_for(1)) == 1
    refused = json.loads(p.cli("audit", "--kind", "sender.refused", "--json").stdout)
    assert len(refused) == len(REFUSE) - len(SMTP_REFUSES_FIRST)


def test_accepted_vectors_end_to_end(verified, sink):
    p = verified
    sendable = [a for a in ACCEPT if all(x.endswith("@" + DOMAIN) for x in expected(a))]
    assert len(sendable) >= 20
    for path in sendable:
        code, text = submit(p, p.admin_key, message([value(path)]))
        assert (code, text) == (250, ""), path.stem
    delivered = sink.wait_for(len(sendable))
    # Signed for the verified domain (the first From's).
    assert all(b"DKIM-Signature:" in m["data"] for m in delivered)


def test_from_field_count_and_name(verified, sink):
    p = verified
    key = p.admin_key
    # Two From fields: RFC 5322 §3.6 allows exactly one, and readers pick
    # different ones.
    code, text = submit(p, key, message([b" me@good.example", b" ceo@bank.example"]))
    assert code == 550 and text.startswith("5.7.1") and "2 From header fields" in text
    code, text = submit(p, key, message([b" me@good.example", b" me@good.example"]))
    assert code == 550 and text.startswith("5.7.1")
    # "From :" (white space before the colon, obsolete, §4.5).
    body = b"To: rcpt@example.net\r\nFrom : ceo@bank.example\r\nSubject: s\r\n\r\nx\r\n"
    code, text = submit(p, key, body)
    assert code == 550 and text.startswith("5.7.1")
    # No From at all: checked on the envelope alone, as before.
    body = b"To: rcpt@example.net\r\nSubject: s\r\n\r\nx\r\n"
    assert submit(p, key, body)[0] == 250
    code, text = submit(p, key, body, mail_from="ceo@bank.example")
    assert code == 550 and "envelope sender domain bank.example" in text
    assert len(sink.wait_for(1)) == 1
