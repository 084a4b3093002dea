"""docs/claims.md maps README claims to tests. This keeps the map honest:
every `path::name` it cites must be a test that exists (a Rust function
marked #[test] or #[tokio::test] in that file, or a module-level pytest
function in that Python file), and every row of its tables must cite at
least one. Renaming or removing a cited test fails here until the document
follows.

The checks run on the real document, and on small documents made up here
that cite what does not exist, so the check is seen to fail when it
should."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLAIMS = ROOT / "docs" / "claims.md"

# `crates/x/src/y.rs::name` or `tests/e2e/test_x.py::test_name`.
REFERENCE = re.compile(r"`([\w./-]+\.(?:rs|py))::(\w+)`")
# A Rust test function: its test attribute, then any other attributes,
# comments or blank lines, then `fn NAME(`.
RUST_TEST = r"#\[(?:tokio::)?test(?:\([^\]]*\))?\]\s*(?:(?:#\[[^\]]*\]|//[^\n]*)\s*)*(?:pub\s+)?(?:async\s+)?fn\s+{name}\s*\("


def references(text):
    """Every (path, name) the document cites, in order."""
    return REFERENCE.findall(text)


def is_test(root, path, name):
    """Whether `path` (relative to `root`) defines the test `name`."""
    file = root / path
    if not file.is_file():
        return False
    source = file.read_text(encoding="utf-8")
    if path.endswith(".rs"):
        return re.search(RUST_TEST.format(name=re.escape(name)), source) is not None
    if not name.startswith("test"):
        return False
    tree = ast.parse(source, filename=str(file))
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
        for node in tree.body
    )


def missing(text, root=ROOT):
    """The cited tests that do not exist, as `path::name`."""
    return [f"{p}::{n}" for p, n in references(text) if not is_test(root, p, n)]


def rows_without_a_test(text):
    """Table rows (claim rows, not headers or separators) whose second
    column cites no test."""
    bare = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        # A header row is the one followed by the |---| separator.
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|- ") and lines[i + 1].startswith("|"):
            continue
        # Split on unescaped pipes ("strict\|relaxed" is one cell).
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        if len(cells) < 2 or not references(cells[1]):
            bare.append(line[:100])
    return bare


def test_every_cited_test_exists():
    text = CLAIMS.read_text(encoding="utf-8")
    cited = references(text)
    assert len(cited) >= 100, f"only {len(cited)} references found: is the format still `path::name`?"
    assert missing(text) == []


def test_every_claim_row_cites_a_test():
    assert rows_without_a_test(CLAIMS.read_text(encoding="utf-8")) == []


RUST_SOURCE = """
#[test]
fn plain() {}

/// A doc comment, then an attribute with arguments and another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn with_arguments() {}

fn helper() {}

mod tests {
    #[tokio::test]
    async fn in_a_module() {}
}
"""

PY_SOURCE = """
def helper():
    pass


def test_present():
    def test_nested():
        pass


async def test_async_present():
    pass
"""


def test_renamed_removed_or_non_test_functions_are_reported(tmp_path):
    (tmp_path / "crates" / "c" / "src").mkdir(parents=True)
    (tmp_path / "crates" / "c" / "src" / "lib.rs").write_text(RUST_SOURCE)
    (tmp_path / "tests" / "e2e").mkdir(parents=True)
    (tmp_path / "tests" / "e2e" / "test_x.py").write_text(PY_SOURCE)
    present = [
        "crates/c/src/lib.rs::plain",
        "crates/c/src/lib.rs::with_arguments",
        "crates/c/src/lib.rs::in_a_module",
        "tests/e2e/test_x.py::test_present",
        "tests/e2e/test_x.py::test_async_present",
    ]
    absent = [
        # Renamed or removed, a helper that is not a test, a missing file.
        "crates/c/src/lib.rs::plain_renamed",
        "crates/c/src/lib.rs::helper",
        "crates/c/src/other.rs::plain",
        "tests/e2e/test_x.py::test_removed",
        "tests/e2e/test_x.py::helper",
        # Nested: not a test pytest collects.
        "tests/e2e/test_x.py::test_nested",
        "tests/e2e/test_y.py::test_present",
    ]
    doc = "\n".join(f"| claim | `{r}` | |" for r in present + absent)
    assert missing(doc, root=tmp_path) == absent


def test_a_row_without_a_test_is_reported():
    doc = "\n".join([
        "| Claim | Tests | How |",
        "|---|---|---|",
        "| cited | `tests/e2e/test_cli.py::test_version_and_help` | |",
        "| strict\\|relaxed, cited | `tests/e2e/test_cli.py::test_version_and_help` | |",
        "| not cited | see the list | `tests/e2e/test_cli.py::test_version_and_help` |",
    ])
    assert rows_without_a_test(doc) == ["| not cited | see the list | `tests/e2e/test_cli.py::test_version_and_help` |"]
