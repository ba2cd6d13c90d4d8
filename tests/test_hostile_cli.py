"""Hostile arguments to ``vlpi save``: each is refused before any work with exit status 2 and one
line on stderr naming the option and the problem, never a traceback. Each case runs the command
in its own process (as a user would); the reusable option helpers are also tested in-process."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from vlpi import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "vlpi", "save", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


CASES = [
    (["--lpis-per-vcpu", "0"], r"argument --lpis-per-vcpu: must be an integer >= 1, got '0'"),
    (["--lpis-per-vcpu", "-5"], r"argument --lpis-per-vcpu: must be an integer >= 1, got '-5'"),
    (["--lpis-per-vcpu", "1e3"], r"argument --lpis-per-vcpu: must be an integer, got '1e3'"),
    (["--lpis-per-vcpu", "8193", "--vcpus", "1", "--id-bits", "14"],
     r"--lpis-per-vcpu 8193 x --vcpus 1 = 8193 LPIs do not fit in the 8192 INTIDs of --id-bits 14 "
     r"\(at most 8192 per vCPU\)"),
    (["--lpis-per-vcpu", "20000000"], r"--lpis-per-vcpu 20000000 x --vcpus 64 = .* do not fit"),
    (["--hw-fraction", "nan"], r"argument --hw-fraction: must be a number in \[0, 1\], got 'nan'"),
    (["--hw-fraction", "NaN"], r"argument --hw-fraction: must be a number in \[0, 1\], got 'NaN'"),
    (["--hw-fraction", "2"], r"argument --hw-fraction: must be a number in \[0, 1\], got '2'"),
    (["--hw-fraction", "-0.1"], r"argument --hw-fraction: must be a number in \[0, 1\], got '-0.1'"),
    (["--hw-fraction", "inf"], r"argument --hw-fraction: must be a number in \[0, 1\], got 'inf'"),
    (["--hw-fraction", "half"], r"argument --hw-fraction: must be a number in \[0, 1\], got 'half'"),
    (["--seed", "-1"], r"argument --seed: must be an integer >= 0, got '-1'"),
    (["--seed", "0x10"], r"argument --seed: must be an integer, got '0x10'"),
    (["--vms", "0"], r"argument --vms: must be an integer >= 1, got '0'"),
    (["--vcpus", "-3"], r"argument --vcpus: must be an integer >= 1, got '-3'"),
    (["--id-bits", "13"], r"argument --id-bits: must be in 14..24, got '13'"),
    (["--id-bits", "25"], r"argument --id-bits: must be in 14..24, got '25'"),
    (["--rounds", "0"], r"argument --rounds: must be an integer >= 1, got '0'"),
    (["--vms", "100000", "--vcpus", "512", "--id-bits", "24"],
     r"this host needs about [\d.]+ GiB of memory but [\d.]+ GiB is available"),
    (["--vcpus", str(10**30)], r"this host needs about [\d.]+ GiB of memory"),
    (["--gic", "v5"], r"argument --gic: invalid choice: 'v5'"),
]


def _check_one_line(rc, out, err, pattern):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vlpi save: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def _args(args):
    return [*args, "--no-baseline"] + ([] if "--rounds" in args else ["--rounds", "1"])


@pytest.mark.parametrize(("args", "pattern"), CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_bad_option_is_one_line_exit_2(args, pattern, capsys):
    try:
        rc = cli.main(["save", *_args(args)])
    except SystemExit as e:  # argparse errors
        rc = e.code
    cap = capsys.readouterr()
    _check_one_line(rc, cap.out, cap.err, pattern)


@pytest.mark.parametrize("k", [0, 5, 12, 18])
def test_bad_option_as_a_user_runs_it(k):
    """The same through ``python -m vlpi`` in its own process: exit status 2, one line, no traceback."""
    args, pattern = CASES[k]
    r = run_cli(*_args(args))
    _check_one_line(r.returncode, r.stdout, r.stderr, pattern)


def test_limits_themselves_are_accepted(capsys):
    """The largest sparse table that fits and both ends of --hw-fraction are legitimate."""
    base = ["save", "--vms", "1", "--vcpus", "2", "--id-bits", "14", "--rounds", "1", "--no-baseline"]
    assert cli.main([*base, "--lpis-per-vcpu", "4096", "--hw-fraction", "0", "--seed", "0"]) == 0
    assert "LPIs           8,192 (0 forwarded)" in capsys.readouterr().out
    assert cli.main([*base, "--hw-fraction", "1"]) == 0
    assert "LPIs           8,192 (8,192 forwarded)" in capsys.readouterr().out


def test_host_too_big_for_memory_is_refused_before_building(monkeypatch, capsys):
    monkeypatch.setattr(cli, "available_bytes", lambda: 1 << 20)
    built = []
    monkeypatch.setattr("vlpi.scenarios.build_host", lambda *a, **k: built.append(1))
    assert cli.main(["save", "--vms", "2", "--vcpus", "4", "--id-bits", "14", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlpi save: error: this host needs about 0.0 GiB of memory but 0.0 GiB is available")
    assert err.count("\n") == 1 and not built


def test_host_options_are_reusable():
    """A future command gets the same options and checks from add_host_options/check_host_options."""
    p = argparse.ArgumentParser(prog="vlpi migrate")
    cli.add_host_options(p)
    a = p.parse_args(["--vms", "2", "--lpis-per-vcpu", "8", "--hw-fraction", "0.25", "--seed", "7"])
    assert (a.vms, a.vcpus, a.id_bits, a.lpis_per_vcpu, a.hw_fraction, a.seed, a.gic) == (2, 64, 16, 8, 0.25, 7, "v4.1")
    cli.check_host_options(a)
    a.lpis_per_vcpu = 1 << 20
    with pytest.raises(cli.UsageError, match=r"--lpis-per-vcpu 1048576 x --vcpus 64"):
        cli.check_host_options(a)
    for fn, bad in [(cli.positive_int, "0"), (cli.nonnegative_int, "-1"), (cli.fraction, "nan"), (cli.id_bits, "99"),
                    (cli.positive_int, "one")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)
    assert cli.host_bytes(64, 64, 16, None, "v4.1") < 1 << 30  # host-4096 fits in 1 GiB
