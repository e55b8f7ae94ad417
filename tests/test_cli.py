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
    parser = build_parser(full=True)
    groups = parser._subparsers._group_actions[0].choices
    seen = 0
    for name, sub in groups.items():
        actions = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        verbs = actions[0].choices.items() if actions else [(name, sub)]
        for verb, p in verbs:
            assert p.epilog and "example:" in p.epilog and "vistok" in p.epilog, f"{name} {verb} lacks an example"
            seen += 1
    assert seen >= 7


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "vistok.cli", "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("vistok ")


def test_help_and_info_do_not_import_torch():
    code = "import sys; from vistok.cli import build_parser; build_parser('info'); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
    r = subprocess.run([sys.executable, "-m", "vistok.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("info", "data", "encode", "decode", "reconstruct", "tokenizer"):
        assert name in r.stdout


def test_data_scenes_writes_scene_pngs_and_captions(tmp_path, capsys):
    import json

    from PIL import Image

    from vistok.cli import main

    out = tmp_path / "s"
    assert main(["data", "scenes", str(out), "--n", "3", "--size", "48", "--clips", "0", "-q"]) == 0
    pngs = sorted((out / "scenes").glob("scene_*.png"))
    assert len(pngs) == 3 and all(Image.open(p).size == (48, 48) for p in pngs)
    lines = (out / "scenes" / "scenes.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["caption"] for line in lines)
    assert "3 train scene(s)" in capsys.readouterr().out
