"""The README's two commands are what CI runs, and its quickstart runs as printed."""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import numpy as np
import pytest

from vlpi.vgic import LOST_DTYPE

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


def _claims(code: str) -> list[tuple[str, str]]:
    """Split a README code block after each top-level ``print(...)`` line: (chunk of code ending
    with that print, the output the README claims for it). The claim is the print line's trailing
    ``# comment``, else the ``#`` lines right after it (one claimed output line each)."""
    lines = code.splitlines()
    out, chunk = [], []
    for i, line in enumerate(lines):
        chunk.append(line)
        if not line.startswith("print("):
            continue
        code_part, sep, comment = line.partition("  # ")
        if sep:
            want = [comment.strip()]
        else:
            want = []
            for nxt in lines[i + 1 :]:
                if not nxt.startswith("#"):
                    break
                want.append(nxt[1:].strip())
        assert want, f"README: {line.strip()!r} does not say what it prints"
        out.append(("\n".join(chunk), "\n".join(want)))
        chunk = []
    if chunk:
        out.append(("\n".join(chunk), ""))
    return out


def _run_checking_claims(code: str, ns: dict, name: str) -> list[str]:
    """Run ``code`` chunk by chunk in ``ns``; what each claimed print printed (mismatches raise)."""
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    printed = []
    for chunk, want in _claims(code):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(chunk, name, "exec"), ns)
        got = buf.getvalue()
        if want:
            assert checker.check_output(want + "\n", got, flags), (
                f"{name}: the README says\n{want}\nbut the code prints\n{got}")
            printed.append(got)
    return printed


def test_claims_harness_can_fail():
    with pytest.raises(AssertionError, match="the README says"):
        _run_checking_claims("print(1 + 1)  # 3\n", {}, "wrong")
    with pytest.raises(AssertionError, match="does not say what it prints"):
        _claims("print(2)\n")
    # a multi-line claim is matched line by line, whitespace-insensitively, with ... wildcards
    assert _run_checking_claims("print('a  b\\nc')\n# a b\n#   c\nprint('xyz')  # x...\n", {}, "ok")


def test_readme_quickstart_runs_and_prints_what_it_says():
    readme = (ROOT / "README.md").read_text()
    code = next(b for b in _code_blocks(readme) if "import vlpi" in b)
    out = _run_checking_claims(code, {}, "README quickstart")
    assert out[0].startswith("SaveReport(lpis_total=3, lpis_skipped=1, guest_reads=2, guest_writes=2, vpt_reads=1, "
                             "bytes_changed=2, vpes_unmapped=2, vpes_remapped=2, dirty_pages=<int64 array, 2 pages>")
    assert out[1].strip() == str(np.array([True, True, False]))


def test_readme_vm_example_runs_and_prints_what_it_says():
    readme = (ROOT / "README.md").read_text()
    code = next(b for b in _code_blocks(readme) if "vlpi.VM(" in b)
    out = _run_checking_claims(code, {}, "README VM example")
    assert out[0].strip() == "2 1 {'VPE_UNMAPPED': 1}"
    assert "VPE_UNMAPPED" in out[1] and out[1].splitlines()[0].split() == list(LOST_DTYPE.names)


def test_readme_snapshot_example_runs_and_prints_what_it_says(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    blocks = _code_blocks(readme)
    vm_example = next(b for b in blocks if "vlpi.VM(" in b)
    snapshot_example = next(b for b in blocks if "vlpi.migration.save(" in b)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    _run_checking_claims(vm_example, ns, "README VM example")
    out = _run_checking_claims(snapshot_example, ns, "README snapshot example")
    assert out == ["True 0\n"]
    assert (tmp_path / "vm.vlpi").is_file()
    src, dst = ns["vm"], ns["dst"]
    assert dst.lpis.intid.tolist() == src.lpis.intid.tolist()
    assert dst.lpis.target_vcpu.tolist() == src.lpis.target_vcpu.tolist()


def _readme_reprs(text: str) -> list[tuple[str, list[str]]]:
    """Every ``ClassName(field=..., ...)`` the README shows: (class name, field names at top level)."""
    found = []
    for m in re.finditer(r"\b([A-Z][A-Za-z0-9]+)\(", text):
        depth, i, body = 1, m.end(), []
        while i < len(text) and depth:
            c = text[i]
            depth += c in "(<[{"
            depth -= c in ")>]}"
            body.append(c if depth == 1 or (depth == 0 and c != ")") else " " if depth > 1 else "")
            i += 1
        flat = re.sub(r"\n#\s*", " ", "".join(body))
        names = re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)=", flat)
        if names:
            found.append((m.group(1), names))
    return found


def _shown_text(readme: str) -> str:
    """What the README shows as output: prose outside code blocks and the comments inside them
    (code itself, such as ``vlpi.VM(2, gic="v4.1")``, is a call, not a repr)."""
    parts = re.split(r"```[^\n]*\n(.*?)```", readme, flags=re.S)
    out = parts[0::2]
    for block in parts[1::2]:
        out += ["#" + line.split("#", 1)[1] for line in block.splitlines() if "#" in line]
    return "\n".join(out)


def _public_class(name: str):
    import importlib

    for mod in ("vlpi", "vlpi.vgic", "vlpi.migration", "vlpi.snapshot", "vlpi.its.abi", "vlpi.qemu"):
        obj = getattr(importlib.import_module(mod), name, None)
        if isinstance(obj, type):
            return obj
    return None


def test_every_repr_in_the_readme_names_real_attributes():
    """A ``Report(name=...)`` shown in the README names attributes of that class (fields of a
    dataclass, properties, or the record fields of a lost-interrupt row)."""
    reprs = _readme_reprs(_shown_text((ROOT / "README.md").read_text()))
    assert any(cls == "SaveReport" for cls, _ in reprs), "the README's SaveReport repr was not found"
    bad = _unknown_fields(reprs)
    assert not bad, f"the README shows fields that are not attributes: {bad}"


def _unknown_fields(reprs: list[tuple[str, list[str]]]) -> list[str]:
    import dataclasses

    bad = []
    for cls_name, names in reprs:
        cls = _public_class(cls_name)
        if cls is None:
            continue  # not a vlpi class (e.g. a function call in an example)
        known = set(dir(cls))
        if dataclasses.is_dataclass(cls):
            known |= {f.name for f in dataclasses.fields(cls)}
        if cls_name == "LostRecord":
            known |= set(LOST_DTYPE.names)
        bad += [f"{cls_name}.{n}" for n in names if n not in known]
    return bad


def test_readme_repr_check_can_fail():
    reprs = _readme_reprs("print(rep)  # SaveReport(lpis=3, reads=<int64 array, 2 pages>, x=f(a=1))")
    assert reprs == [("SaveReport", ["lpis", "reads", "x"])]
    # the names the README used to show are caught
    old = "print(rep)  # SaveReport(lpis=3, skipped=1, reads=2, writes=2, vpt_reads=1, elapsed=0.1)"
    assert _unknown_fields(_readme_reprs(_shown_text(f"```python\n{old}\n```\n"))) == [
        "SaveReport.lpis", "SaveReport.skipped", "SaveReport.reads", "SaveReport.writes", "SaveReport.elapsed"]


def test_readme_development_setup_installs_ruff():
    """The Development section installs an extra that brings ruff before it runs ruff."""
    readme = (ROOT / "README.md").read_text()
    dev = readme[readme.index("## Development") :]
    assert "ruff check" in dev
    extra = re.search(r"pip install -q -e '\.\[(\w+)\]'", dev)
    assert extra, "the Development section does not say how to install the tools it uses"
    pyproject = (ROOT / "pyproject.toml").read_text()

    def requirements(name: str, seen: set[str]) -> set[str]:
        m = re.search(rf"^{name} = \[(.*?)\]$", pyproject, flags=re.M | re.S)
        assert m, f"pyproject.toml has no extra {name!r}"
        reqs = set(re.findall(r'"([^"]+)"', m.group(1)))
        out = set()
        for r in reqs:
            inner = re.match(r"vlpi\[(.*)\]", r)
            if inner:
                for x in inner.group(1).split(","):
                    if x not in seen:
                        seen.add(x)
                        out |= requirements(x.strip(), seen)
            else:
                out.add(re.split(r"[<>=!~ ]", r)[0])
        return out

    assert "ruff" in requirements(extra.group(1), {extra.group(1)})
