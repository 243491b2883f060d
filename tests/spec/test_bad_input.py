"""Every kind of bad input yields one line on stderr, the right exit code, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dr.errors import MissingExtra, SecretUnavailable
from dr.extras import require
from dr.model import EnvRef, FileRef
from dr.secrets import describe, resolve
from tests.conftest import ROOT, run_dr

VALID = (ROOT / "examples/sharepoint/dr.yaml").read_text(encoding="utf-8")


def one_line_error(result: object, code: int) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, (result.returncode, result.stdout, stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dr: error: ")
    return lines[0]


CASES = {
    "malformed YAML": ("estate: x\nazure: [unclosed\n", ":3:1",
                       "not valid YAML: expected ',' or ']', but got '<stream end>' "
                       "(while parsing a flow sequence that starts at line 2)"),
    "bad indentation": ("estate: x\nazure:\n  region: a\n region: b\n", ":4:", "not valid YAML"),
    "duplicate key": ("estate: a\nestate: b\n", ":2:1", "duplicate key 'estate' (first at line 1)"),
    "empty file": ("", "", "the file is empty"),
    "a list, not a mapping": ("- estate: x\n", ":1:1", "expected a mapping"),
    "not UTF-8": (b"estate: caf\xe9\n", "", "not UTF-8"),
    "missing include": ("include: [nowhere.yaml]\n" + VALID, ":1:11", "included file 'nowhere.yaml' not found"),
    "include not a list": ("include: {a: 1}\n" + VALID, "", "include: expects a list"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unreadable_spec(tmp_path: Path, name: str) -> None:
    content, where, fragment = CASES[name]
    spec = tmp_path / "dr.yaml"
    spec.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = one_line_error(run_dr("validate", str(spec)), 2)
    assert fragment in line and where in line, line


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "no such file" in one_line_error(run_dr("validate", str(tmp_path / "none.yaml")), 2)
    assert "is a directory" in one_line_error(run_dr("validate", str(tmp_path)), 2)


def test_include_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\nmachines: []\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\nmachines: []\n")
    (tmp_path / "dr.yaml").write_text("include: [a.yaml]\n" + VALID)
    assert "include cycle" in one_line_error(run_dr("validate", str(tmp_path / "dr.yaml")), 2)


def test_wrong_types_are_findings_not_crashes(tmp_path: Path) -> None:
    spec = tmp_path / "dr.yaml"
    spec.write_text(VALID.replace("vcpus: 8", "vcpus: eight").replace("memory_gb: 4\n", "memory_gb: [4]\n"))
    result = run_dr("validate", str(spec))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "machines.1.vcpus: expected a valid integer; found 'eight'" in result.stdout
    assert "machines.0.memory_gb: expected a valid number; found a list" in result.stdout


def test_show_refuses_an_invalid_spec_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "dr.yaml"
    spec.write_text(VALID.replace("storage_redundancy: GRS", "storage_redundancy: LRS"))
    assert "run `dr validate`" in one_line_error(run_dr("show", str(spec)), 1)


def test_usage_errors_exit_2() -> None:
    result = run_dr("validate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_dr("validate", "examples/sharepoint/dr.yaml", "--format", "yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_dr("no-such-command")
    assert result.returncode == 2


def test_python_spec_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from dr import Estate\n\nestate = Estate(estate='x')\n")
    line = one_line_error(run_dr("validate", str(bad)), 2)
    assert ":3:" in line and "azure" in line
    raising = tmp_path / "raising.py"
    raising.write_text("x = 1\nraise RuntimeError('no estate for you')\n")
    assert "raising.py:2: RuntimeError: no estate for you" in one_line_error(run_dr("validate", str(raising)), 2)
    syntax = tmp_path / "syntax.py"
    syntax.write_text("estate = (\n")
    assert "SyntaxError" in one_line_error(run_dr("validate", str(syntax)), 2)
    nothing = tmp_path / "nothing.py"
    nothing.write_text("x = 1\n")
    assert "defines no `estate`" in one_line_error(run_dr("validate", str(nothing)), 2)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("estate = {'estate': 'x'}\n")
    assert "expected dr.Estate" in one_line_error(run_dr("validate", str(wrong)), 2)


def test_env_reference_resolved_only_when_needed_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DR_TEST_UNSET", raising=False)
    with pytest.raises(SecretUnavailable) as info:
        resolve(EnvRef(env="DR_TEST_UNSET"), what="the vCenter password")
    assert str(info.value) == ("the vCenter password is read from $DR_TEST_UNSET, which is not set; "
                               "export DR_TEST_UNSET=... before running")
    monkeypatch.setenv("DR_TEST_SET", "s3cret-value")
    assert resolve(EnvRef(env="DR_TEST_SET")) == "s3cret-value"
    assert describe(EnvRef(env="DR_TEST_SET")) == "$DR_TEST_SET"
    # validation never needs the value: the example validates with the variables unset
    result = run_dr("validate", "examples/sharepoint/dr.yaml", env={"VCENTER_PASSWORD": "do-not-print-me"})
    assert "do-not-print-me" not in result.stdout + result.stderr


def test_file_reference(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("first-line\nsecond\n")
    assert resolve(FileRef(file=str(secret))) == "first-line"
    with pytest.raises(SecretUnavailable, match="does not exist"):
        resolve(FileRef(file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretUnavailable, match="is empty"):
        resolve(FileRef(file=str(tmp_path / "empty")))


def test_literal_secret_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "dr.yaml"
    spec.write_text(VALID.replace("password: {env: VCENTER_PASSWORD}", "password: hunter2"))
    result = run_dr("validate", str(spec))
    assert result.returncode == 1
    assert "sites.0.vcenter.password: a credential is never written literally" in result.stdout


def test_missing_extra_is_a_one_line_hint() -> None:
    with pytest.raises(MissingExtra) as info:
        require("pulumi_not_installed_here", feature="dr preview", extra="azure")
    assert str(info.value) == ("dr preview needs the 'azure' extra (pulumi_not_installed_here is not installed): "
                               "pip install 'dr-as-code[azure]'")
