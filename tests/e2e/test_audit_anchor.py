"""The audit chain's head is anchored outside the database, so deleting the
newest entries (which leaves a shorter chain that is still valid) is
detected, as are a deleted middle entry and an emptied table (issue 16
item 2)."""

import base64
import json
import sqlite3

from conftest import wait_until
from test_accounts import smtp


def make_entries(postern, n=3):
    for i in range(n):
        postern.cli("key", "create", "--name", f"anchor-{i}")


def db_exec(postern, sql):
    """What someone with the database (but not the anchor key) can do: the
    append-only triggers are dropped first, as the tamper test does."""
    db = sqlite3.connect(postern.data_dir / "postern.db")
    db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    db.execute(sql)
    db.commit()
    db.close()


def max_seq(postern):
    db = sqlite3.connect(postern.data_dir / "postern.db")
    (seq,) = db.execute("SELECT MAX(seq) FROM audit").fetchone()
    db.close()
    return seq


def verify(postern, *args):
    return postern.cli("audit", "verify", *args, check=False)


def test_intact_chain_verifies_against_its_recorded_head(postern):
    make_entries(postern)
    out = verify(postern)
    assert out.returncode == 0, out.stderr
    assert "intact" in out.stdout and f"entry {max_seq(postern)} present" in out.stdout, out.stdout


def test_deleting_the_newest_entry_is_detected(postern):
    make_entries(postern)
    seq = max_seq(postern)
    db_exec(postern, f"DELETE FROM audit WHERE seq = {seq}")
    out = verify(postern)
    assert out.returncode != 0, out.stdout
    assert "TAMPERED" in out.stderr and "truncated" in out.stderr, out.stderr
    assert f"entry {seq}" in out.stderr and f"ends at entry {seq - 1}" in out.stderr, out.stderr


def test_deleting_an_entry_in_the_middle_is_detected(postern):
    make_entries(postern)
    middle = max_seq(postern) // 2 + 1
    db_exec(postern, f"DELETE FROM audit WHERE seq = {middle}")
    out = verify(postern)
    assert out.returncode != 0 and "TAMPERED" in out.stderr, out.stderr


def test_truncating_the_table_is_detected(postern):
    make_entries(postern)
    db_exec(postern, "DELETE FROM audit")
    out = verify(postern)
    assert out.returncode != 0, out.stdout
    assert "TAMPERED" in out.stderr and "ends at entry 0" in out.stderr, out.stderr


def test_server_appends_keep_the_recorded_head_current(postern):
    # AUTH outcomes are appended by the server process, not the CLI.
    before = max_seq(postern) or 0
    # One AUTH exchange (smtplib's login would try a second mechanism after
    # the first fails, appending a second entry): one auth.failure entry.
    with smtp(postern, "127.0.0.1") as s:
        s.ehlo()
        token = base64.b64encode(b"\0apikey\0pst_" + b"C" * 43).decode()
        assert s.docmd("AUTH", "PLAIN " + token)[0] == 535
    # The entry is appended after the reply, and the head recorded after
    # its commit: poll until the file names it.
    head_file = postern.data_dir / "audit.head"
    wait_until(lambda: head_file.exists() and int(head_file.read_text().split()[1]) == before + 1,
               timeout=10, what="the recorded head at the failed AUTH's entry")
    seq = max_seq(postern)
    head = head_file.read_text().split()
    assert head[0] == "postern-audit-head-v1" and int(head[1]) == seq, head
    db_exec(postern, f"DELETE FROM audit WHERE seq = {seq}")
    out = verify(postern)
    assert out.returncode != 0 and "truncated" in out.stderr, out.stderr


def test_operator_anchor_detects_truncation_even_without_the_head_file(postern):
    make_entries(postern)
    anchor = json.loads(postern.cli("audit", "anchor", "--json").stdout)
    assert anchor["seq"] == max_seq(postern)
    assert len(anchor["hash"]) == 64 and len(anchor["hmac"]) == 64
    assert anchor["anchor"] == f"{anchor['seq']}:{anchor['hash']}"
    make_entries(postern, 1)
    assert verify(postern, "--anchor", anchor["anchor"]).returncode == 0

    # Someone who can also remove files removes the head record: the
    # operator's copy still shows the cut.
    db_exec(postern, f"DELETE FROM audit WHERE seq >= {anchor['seq']}")
    (postern.data_dir / "audit.head").unlink()
    out = verify(postern, "--anchor", anchor["anchor"])
    assert out.returncode != 0 and "truncated" in out.stderr, out.stderr
    assert "--anchor" in out.stderr, out.stderr

    # An anchor for an entry still present, whose hash is not that entry's:
    # the chain was rewritten from there on.
    digest = anchor["hash"]
    wrong = f"1:{digest[:-1]}{'0' if digest[-1] != '0' else '1'}"
    out = verify(postern, "--anchor", wrong)
    assert out.returncode != 0, out.stdout
    assert "TAMPERED: rewritten" in out.stderr and "names entry 1 with hash" in out.stderr, out.stderr
    out = verify(postern, "--anchor", "not-an-anchor")
    assert out.returncode != 0 and "SEQ:HASH" in out.stderr, out.stderr


def test_an_edited_head_record_is_refused(postern):
    make_entries(postern)
    path = postern.data_dir / "audit.head"
    tag, seq, digest, mac = path.read_text().split()
    path.write_text(f"{tag} {int(seq) - 1} {digest} {mac}\n")
    out = verify(postern)
    assert out.returncode != 0 and "HMAC" in out.stderr, out.stderr
