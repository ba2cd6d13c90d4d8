"""The README's two commands are what CI runs, and its quickstart runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:python)?\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(b.strip() for b in _code_blocks(readme) if "pytest" in b and b.count("\n") == 1)
    assert test_cmd in ci.splitlines(), f".ci/run does not run the README test command: {test_cmd!r}"


def test_readme_main_job_command_uses_the_console_script():
    readme = (ROOT / "README.md").read_text()
    main_cmd = next(b.strip() for b in _code_blocks(readme) if ".venv/bin/vlpi " in b)
    assert main_cmd.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert main_cmd.endswith(".venv/bin/vlpi migrate")


def test_readme_quickstart_runs_and_prints_what_it_says(capsys):
    readme = (ROOT / "README.md").read_text()
    code = next(b for b in _code_blocks(readme) if "import vlpi" in b)
    exec(compile(code, "README quickstart", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("SaveReport(lpis=3, skipped=1, reads=2, writes=2, vpt_reads=1, bytes_changed=2, vpes=2/2")
    assert out[1] == str(np.array([True, True, False]))


def test_readme_vm_example_runs_and_prints_what_it_says(capsys):
    readme = (ROOT / "README.md").read_text()
    code = next(b for b in _code_blocks(readme) if "vlpi.VM(" in b)
    exec(compile(code, "README VM example", "exec"), {})
    assert capsys.readouterr().out.strip() == "2 1 {'VPE_UNMAPPED': 1}"


def test_readme_snapshot_example_runs_and_prints_what_it_says(capsys, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    blocks = _code_blocks(readme)
    vm_example = next(b for b in blocks if "vlpi.VM(" in b)
    snapshot_example = next(b for b in blocks if "vlpi.migration.save(" in b)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(vm_example, "README VM example", "exec"), ns)
    capsys.readouterr()
    exec(compile(snapshot_example, "README snapshot example", "exec"), ns)
    assert capsys.readouterr().out.strip() == "True 0"
    assert (tmp_path / "vm.vlpi").is_file()
    src, dst = ns["vm"], ns["dst"]
    assert dst.lpis.intid.tolist() == src.lpis.intid.tolist()
    assert dst.lpis.target_vcpu.tolist() == src.lpis.target_vcpu.tolist()
