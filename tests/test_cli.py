"""The `vistok` command: dispatch, help texts, errors."""

import subprocess
import sys

import pytest

from vistok.cli import build_parser, main


def test_info_lists_versions_and_extras(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    import torch

    assert "vistok" in out and torch.__version__ in out
    assert "huggingface_hub" in out and "device" in out


def test_every_verb_has_help_with_an_example():
    parser = build_parser()
    groups = parser._subparsers._group_actions[0].choices
    seen = 0
    for name, sub in groups.items():
        actions = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        verbs = actions[0].choices.items() if actions else [(name, sub)]
        for verb, p in verbs:
            assert p.epilog and "example:" in p.epilog and "vistok" in p.epilog, f"{name} {verb} lacks an example"
            seen += 1
    assert seen >= 3


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "vistok.cli", "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("vistok ")
