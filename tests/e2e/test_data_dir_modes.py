"""Every file in the data directory is the postern user's only (0600, and
0700 for directories), whatever umask Postern is started with, and modes an
older version left wider are repaired at start, with a warning."""

import os
import stat
import subprocess
import tempfile
from pathlib import Path

from conftest import BIN, Postern, send_as


def permissive():
    os.umask(0o022)


def start_permissive(p):
    """Like Postern.start, but as a service manager with umask 022 would."""
    return p.start(preexec_fn=permissive)


def cli_permissive(p, *args):
    return subprocess.run(
        [str(BIN), "--config", str(p.config_path), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        preexec_fn=permissive,
    )


def modes(root: Path):
    """(path, mode) of the root and everything under it, links not followed."""
    out = [(root, stat.S_IMODE(root.lstat().st_mode))]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out.append((path, stat.S_IMODE(path.lstat().st_mode)))
    return out


def assert_private(root: Path, running=True):
    seen = modes(root)
    names = {p.name for p, _ in seen}
    # The store, the TLS pair, and while the server runs the WAL and shared
    # memory (a clean stop checkpoints and removes them): all present.
    expected = ["postern.db", "cert.pem", "key.pem"]
    if running:
        expected += ["postern.db-wal", "postern.db-shm"]
    for expected in expected:
        assert expected in names, sorted(names)
    wrong = [
        (str(p), oct(m))
        for p, m in seen
        if m != (0o700 if p.is_dir() and not p.is_symlink() else 0o600)
    ]
    assert not wrong, wrong


def test_data_dir_is_private_under_a_permissive_umask(sink):
    with tempfile.TemporaryDirectory() as d:
        p = start_permissive(Postern(d, sink.port))
        try:
            key = p.read_admin_key()
            assert send_as(p, key, "a@example.org", "a@example.org")[0] == 250
            sink.wait_for(1)
            cli_permissive(p, "key", "create", "--name", "modes")
            cli_permissive(p, "audit", "verify")
            assert_private(p.data_dir)
        finally:
            p.stop()
        assert_private(p.data_dir, running=False)


def test_wider_modes_left_by_an_older_version_are_repaired(sink):
    with tempfile.TemporaryDirectory() as d:
        p = Postern(d, sink.port).start()
        key = p.read_admin_key()
        assert send_as(p, key, "a@example.org", "a@example.org")[0] == 250
        sink.wait_for(1)
        p.stop()
        # What an older version under umask 022 left behind.
        (p.data_dir / "notes.txt").write_text("left by hand\n")
        for path, _ in modes(p.data_dir):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        out = cli_permissive(p, "audit", "verify")
        assert "key.pem" in out.stderr and "0644" in out.stderr, out.stderr
        assert "notes.txt" in out.stderr, out.stderr
        wrong = [
            (str(path), oct(m))
            for path, m in modes(p.data_dir)
            if m != (0o700 if path.is_dir() else 0o600)
        ]
        assert not wrong, wrong
        # And the server, started afterwards, keeps it that way.
        start_permissive(p)
        try:
            assert send_as(p, key, "a@example.org", "a@example.org")[0] == 250
            sink.wait_for(2)
            assert_private(p.data_dir)
        finally:
            p.stop()
