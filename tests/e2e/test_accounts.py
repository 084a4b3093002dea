"""Accounts, subusers, passwords, IP allowlists and the audit log, driven
through the command line while the server runs, checked with smtplib."""

import json
import smtplib
import sqlite3
import ssl
import subprocess

from conftest import BIN, ehlo_extensions, wait_until


def smtp(postern, source="127.0.0.1"):
    s = smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30, source_address=(source, 0))
    s.starttls(context=ssl.create_default_context(cafile=postern.cert))
    return s


def can_login(postern, user, secret, source="127.0.0.1"):
    with smtp(postern, source) as s:
        try:
            s.login(user, secret)
            return True
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535, e
            return False


def cli_json(postern, *args):
    return json.loads(postern.cli(*args, "--json").stdout)


def test_subuser_keys_send_and_disabling_the_parent_stops_them(postern, sink):
    postern.cli("account", "create", "acme")
    cli_json(postern, "subuser", "create", "marketing", "--account", "acme")
    key = cli_json(postern, "key", "create", "--account", "marketing", "--scopes", "mail.send")
    with smtp(postern) as s:
        s.login("apikey", key["key"])
        s.sendmail("news@example.org", ["reader@example.net"], b"Subject: from a subuser\r\n\r\nhi\r\n")
    sink.wait_for(1)
    events = cli_json(postern, "events")
    received = [e for e in events if e["event"] == "processed"][-1]
    assert "account=marketing" in received["detail"]

    subusers = cli_json(postern, "subuser", "list", "--account", "acme")
    assert [s["name"] for s in subusers] == ["marketing"]
    postern.cli("account", "disable", "acme")
    assert not can_login(postern, "apikey", key["key"])
    postern.cli("account", "enable", "acme")
    assert can_login(postern, "apikey", key["key"])
    # Keys for accounts that do not exist are refused with a clear message.
    out = postern.cli("key", "create", "--account", "nobody", check=False)
    assert out.returncode != 0 and "no account named nobody" in out.stderr


def test_password_auth_is_off_by_default_and_follows_the_policy(postern):
    postern.cli("account", "create", "legacy")
    weak = subprocess.run(
        [str(BIN), "--config", str(postern.config_path), "account", "password", "legacy"],
        input="password1234\n", capture_output=True, text=True,
    )
    assert weak.returncode != 0 and "common passwords" in weak.stderr
    good = subprocess.run(
        [str(BIN), "--config", str(postern.config_path), "account", "password", "legacy"],
        input="violet-anchor-tundra-42\n", capture_output=True, text=True,
    )
    assert good.returncode == 0, good.stderr
    # Right password, but basic auth is off for the account: refused.
    assert not can_login(postern, "legacy", "violet-anchor-tundra-42")
    postern.cli("account", "password-auth", "legacy", "on")
    assert can_login(postern, "legacy", "violet-anchor-tundra-42")
    assert not can_login(postern, "legacy", "violet-anchor-tundra-43")


def test_ip_allowlist(postern):
    postern.cli("account", "create", "locked")
    key = cli_json(postern, "key", "create", "--account", "locked")
    postern.cli("ip-access", "add", "locked", "127.0.0.2/32")
    assert cli_json(postern, "ip-access", "list", "locked") == ["127.0.0.2/32"]
    assert not can_login(postern, "apikey", key["key"], source="127.0.0.1")
    assert can_login(postern, "apikey", key["key"], source="127.0.0.2")
    postern.cli("ip-access", "remove", "locked", "127.0.0.2/32")
    assert can_login(postern, "apikey", key["key"], source="127.0.0.1")


def test_audit_log_records_everything_and_detects_tampering(postern):
    key = cli_json(postern, "key", "create", "--name", "audited")
    can_login(postern, "apikey", key["key"])
    can_login(postern, "apikey", "pst_" + "B" * 43)
    postern.cli("key", "revoke", key["id"])
    # AUTH outcomes are appended asynchronously: poll for them.
    wanted = {"key.create", "auth.success", "auth.failure", "key.revoke"}
    entries = wait_until(lambda: (e := cli_json(postern, "audit")) and wanted <= {x["kind"] for x in e} and e,
                         timeout=10, what=f"audit entries {wanted}")
    failure = [e for e in entries if e["kind"] == "auth.failure"][-1]
    assert failure["client_ip"] == "127.0.0.1" and failure["actor"] == "apikey"
    only_auth = cli_json(postern, "audit", "--kind", "auth.")
    assert {e["kind"] for e in only_auth} <= {"auth.success", "auth.failure", "auth.blocked"}
    assert "intact" in postern.cli("audit", "verify").stdout

    db = sqlite3.connect(postern.data_dir / "postern.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET detail = 'nothing happened' WHERE kind = 'auth.failure'")
    db.commit()
    db.close()
    out = postern.cli("audit", "verify", check=False)
    assert out.returncode != 0 and "TAMPERED" in out.stderr


def test_cram_md5_is_opt_in_per_account_and_listener(postern):
    def set_password(name, password, *extra):
        out = subprocess.run(
            [str(BIN), "--config", str(postern.config_path), "account", *extra, name],
            input=password + "\n", capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stderr

    for name in ["cram-user", "plain-user"]:
        postern.cli("account", "create", name)
        set_password(name, "violet-anchor-tundra-42", "password")
        postern.cli("account", "password-auth", name, "on")
    # Opting in needs the current password.
    wrong = subprocess.run(
        [str(BIN), "--config", str(postern.config_path), "account", "cram-md5", "cram-user", "on"],
        input="not-the-password-1\n", capture_output=True, text=True,
    )
    assert wrong.returncode != 0 and "not cram-user's current password" in wrong.stderr
    out = subprocess.run(
        [str(BIN), "--config", str(postern.config_path), "account", "cram-md5", "cram-user", "on"],
        input="violet-anchor-tundra-42\n", capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr

    ctx = ssl.create_default_context(cafile=postern.cert)
    # The default listener does not offer CRAM-MD5.
    with smtplib.SMTP("127.0.0.1", postern.ports["submission"], timeout=30) as s:
        s.starttls(context=ctx)
        s.ehlo()
        assert ehlo_extensions(s)["auth"] == "PLAIN LOGIN"
    with smtplib.SMTP("127.0.0.1", postern.ports["submission_cram"], timeout=30) as s:
        s.starttls(context=ctx)
        s.ehlo()
        assert ehlo_extensions(s)["auth"] == "PLAIN LOGIN CRAM-MD5"
        s.user, s.password = "cram-user", "violet-anchor-tundra-42"
        code, _ = s.auth("CRAM-MD5", s.auth_cram_md5)
        assert code == 235
    with smtplib.SMTP("127.0.0.1", postern.ports["submission_cram"], timeout=30) as s:
        s.starttls(context=ctx)
        s.user, s.password = "cram-user", "violet-anchor-tundra-43"
        s.ehlo()
        try:
            s.auth("CRAM-MD5", s.auth_cram_md5)
            raise AssertionError("wrong password accepted")
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535
    # An account that did not opt in cannot use CRAM-MD5 (PLAIN still works).
    with smtplib.SMTP("127.0.0.1", postern.ports["submission_cram"], timeout=30) as s:
        s.starttls(context=ctx)
        s.ehlo()
        s.user, s.password = "plain-user", "violet-anchor-tundra-42"
        try:
            s.auth("CRAM-MD5", s.auth_cram_md5)
            raise AssertionError("CRAM-MD5 accepted without opt-in")
        except smtplib.SMTPAuthenticationError:
            pass
        code, _ = s.auth("PLAIN", s.auth_plain)
        assert code == 235
    def both_audited():
        audit = cli_json(postern, "audit", "--kind", "auth.")
        return (any(e["kind"] == "auth.success" and "mechanism=CRAM-MD5" in e["detail"] and e["account"] == "cram-user" for e in audit)
                and any(e["kind"] == "auth.failure" and "cram_md5_not_enabled" in e["detail"] for e in audit))
    wait_until(both_audited, timeout=10, what="the CRAM-MD5 success and the refusal in the audit log")


def test_key_networks_last_use_authzid_per_account_events_and_audit_api(postern, sink):
    import base64
    import time
    import urllib.request

    postern.cli("account", "create", "corp")
    postern.cli("subuser", "create", "billing", "--account", "corp")
    bound = cli_json(postern, "key", "create", "--account", "corp", "--allow-ip", "127.0.0.2", "--scopes", "mail.send,full_access")
    assert bound["allowed_ips"] == ["127.0.0.2/32"]
    assert not can_login(postern, "apikey", bound["key"], source="127.0.0.1")
    assert can_login(postern, "apikey", bound["key"], source="127.0.0.2")
    # Last use is recorded after the reply: poll for it.
    wait_until(lambda: [k for k in cli_json(postern, "key", "list") if k["id"] == bound["id"]][0]["last_used_at"],
               timeout=10, what="the key's last use")

    # AUTH PLAIN with an authorization identity: a parent may act for its
    # own subuser (the mail is then the subuser's), nobody else's.
    def plain(authzid, source="127.0.0.2"):
        with smtp(postern, source) as s:
            s.ehlo()
            token = base64.b64encode(f"{authzid}\0apikey\0{bound['key']}".encode()).decode()
            code, _ = s.docmd("AUTH", "PLAIN " + token)
            if code != 235:
                return code
            s.sendmail("billing@example.org", ["payer@example.net"], b"Subject: invoice\r\n\r\nx\r\n")
            return code

    assert plain("admin") == 535
    assert plain("billing") == 235
    sink.wait_for(1)
    # The delivered event is written right after the sink's 250.
    wait_until(lambda: {e["event"] for e in cli_json(postern, "events", "--account", "billing")} >= {"processed", "delivered"},
               timeout=10, what="billing's processed and delivered events")
    assert cli_json(postern, "events", "--account", "corp") == []

    # The audit log over the API: the account's own entries, or a subuser's.
    def audit_api(query):
        req = urllib.request.Request(
            f"http://127.0.0.1:{postern.ports['http']}/v3/audit?{query}",
            headers={"Authorization": f"Bearer {postern.admin_key}"},
        )
        return json.loads(urllib.request.urlopen(req, timeout=10).read())["result"]

    admin_entries = audit_api("kind=key.")
    assert all(e["account"] == "admin" for e in admin_entries) and admin_entries
    try:
        audit_api("account=corp")
        raise AssertionError("admin read corp's audit log")
    except urllib.error.HTTPError as e:
        assert e.code == 403


def test_each_subuser_has_its_own_hourly_limit(postern, sink):
    postern.cli("account", "create", "shop")
    postern.cli("subuser", "create", "newsletter", "--account", "shop")
    postern.cli("subuser", "create", "receipts", "--account", "shop")
    postern.cli("account", "limit", "newsletter", "--messages-per-hour", "2")
    keys = {n: cli_json(postern, "key", "create", "--account", n, "--scopes", "mail.send")["key"] for n in ["newsletter", "receipts"]}
    results = {"newsletter": [], "receipts": []}
    for name in ["newsletter", "receipts"]:
        with smtp(postern) as s:
            s.login("apikey", keys[name])
            for _ in range(3):
                code, msg = s.mail("from@example.org")
                if code == 250:
                    s.rcpt("to@example.net")
                    code, msg = s.data(b"Subject: limited\r\n\r\nx\r\n")
                else:
                    s.rset()
                results[name].append((code, msg))
    assert [c for c, _ in results["newsletter"]] == [250, 250, 450]
    # 4.7.1 (RFC 3463: delivery not authorized, a policy refusal), as the
    # README says.
    assert results["newsletter"][2][1].startswith(b"4.7.1 "), results["newsletter"][2]
    assert b"limit of 2 messages per hour" in results["newsletter"][2][1]
    assert [c for c, _ in results["receipts"]] == [250, 250, 250], "a sibling's limit does not touch this stream"
    sink.wait_for(5)


def test_hourly_limit_holds_under_concurrent_sends(postern, sink):
    """Twenty clients racing against a limit of 3: exactly 3 messages are
    accepted (the limit is reserved atomically, not checked then counted)."""
    import threading

    postern.cli("account", "create", "racer")
    postern.cli("account", "limit", "racer", "--messages-per-hour", "3")
    key = cli_json(postern, "key", "create", "--account", "racer", "--scopes", "mail.send")["key"]
    ready = threading.Barrier(20)
    codes = []

    def one():
        with smtp(postern) as s:
            s.login("apikey", key)
            # MAIL's early check passes for everyone before anything is
            # counted; DATA is where the reservation is made.
            s.mail("from@example.org")
            s.rcpt("to@example.net")
            ready.wait()
            code, _ = s.data(b"Subject: race\r\n\r\nx\r\n")
            codes.append(code)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(codes) == 20
    # The other 17 get the hourly limit's temporary refusal, as a lone
    # sender over the limit does (450, above).
    assert sorted(codes) == [250] * 3 + [450] * 17, codes
