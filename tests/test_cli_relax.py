"""``definet relax`` and ``definet info``: refusals before any work, file modes, pipes,
summaries, help."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from ase.io import write

from ase_definet import __version__, save_checkpoint
from ase_definet.cli import build_parser
from ase_definet.cli import main as cli

from .conftest import tiny_model


@pytest.fixture
def ckpt(tmp_path):
    return str(save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors",
                               {"data": {"description": "unit test pairs"},
                                "test_metrics": {"overall": {"all": 0.06, "A3": 0.11,
                                                             "dummy_all": 0.12,
                                                             "dummy_A3": 0.24}}}))


@pytest.fixture
def host_file(tmp_path, host):
    write(tmp_path / "host.cif", host)
    return str(tmp_path / "host.cif")


@pytest.mark.parametrize("args, msg", [
    (["--substitute", "0:W", "0:Se"], "site 0 is substituted twice"),
    (["--vacancies", "1", "--vacancies", "2"], "--vacancies was given twice"),
    (["--substitute", "0:W", "--substitute", "3:W"], "--substitute was given twice"),
])
def test_repeated_site_or_flag_is_refused(tmp_path, host_file, ckpt, capsys, args, msg):
    out = tmp_path / "out.extxyz"
    with pytest.raises(SystemExit) as exc:
        code = cli(["relax", host_file, *args, "-o", str(out), "--model", ckpt, "-q"])
        raise SystemExit(code)
    assert exc.value.code == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_output_without_format_fails_before_relaxing(tmp_path, host_file, ckpt, capsys,
                                                     monkeypatch):
    from ase_definet import relaxer

    def boom(*a, **k):
        raise AssertionError("relaxed before checking the output name")

    monkeypatch.setattr(relaxer.DefiNetRelaxer, "run", boom)
    rc = cli(["relax", host_file, "--vacancies", "1", "-o", str(tmp_path / "result"),
              "--model", ckpt, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot tell the output format" in err and "--format" in err
    assert ".tmp" not in err and not list(tmp_path.glob("*result*"))


def test_output_files_get_the_usual_mode(tmp_path, host_file, ckpt):
    old = os.umask(0o022)
    try:
        out = tmp_path / "relaxed.extxyz"
        assert cli(["relax", host_file, "--vacancies", "1", "-o", str(out), "--model", ckpt,
                    "-q"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_info_summary_json_and_version(ckpt, capsys):
    assert cli(["info", ckpt]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) < 40
    assert any(line.startswith("elements") and "Mo" in line for line in lines)
    assert any(line.startswith("graph") and "cutoff 5" in line for line in lines)
    row = next(line.split() for line in lines if line.startswith("overall"))
    assert [float(x) for x in row[1:5]] == [0.06, 0.12, 0.11, 0.24]
    assert cli(["info", ckpt, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["hidden"] == 32
    with pytest.raises(SystemExit) as exc:
        cli(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"definet {__version__}"


def test_info_into_a_closed_pipe_has_no_traceback(ckpt):
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "ase_definet.cli", "info", ckpt],
                            stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    os.close(r)  # like `| head` that has already exited
    err = proc.communicate(timeout=120)[1].decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def _options(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a}", h) for a, h in _options(sub))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield "/".join(action.option_strings) or action.dest, action.help


def test_every_option_has_help_and_train_help_shows_defaults():
    ours = ("relax", "info", "demo", "plot", "summary")
    missing = [name for name, h in _options(build_parser())
               if name.split()[0] in ours and not h]
    assert missing == []
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    assert "(default: 0.1)" in text  # --val-fraction, its own default
    assert "(default: 300)" in text  # --epochs: the TrainConfig default
