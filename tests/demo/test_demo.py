"""The demo's smoke profile end to end, asserted on report.json (not just exit codes), and the report writer."""

import json
import re

import pytest

from vistok.demo import DemoConfig, Metric, StageResult, run_demo, write_report
from vistok.demo.report import Picture
from vistok.demo.stages import PROFILES, STAGES


def test_every_stage_runs_and_reports_numbers(smoke_demo):
    report = json.loads(smoke_demo.report_json.read_text())
    assert report["profile"] == "smoke"
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    for stage in report["stages"]:
        assert stage["status"] == "ok", f"{stage['name']} failed:\n{stage['error']}"
        assert stage["seconds"] > 0
        assert stage["commands"], stage["name"]
        assert stage["pictures"], f"{stage['name']} drew no picture"
        for pic in stage["pictures"]:
            assert (smoke_demo.out / pic["path"]).is_file(), pic
        # every stage reports held-out numbers against a trivial baseline
        with_baseline = [m for m in stage["metrics"] if m["baselines"]]
        assert with_baseline, f"{stage['name']} has no metric with a baseline"
        for m in stage["metrics"]:
            assert m["value"] is None or isinstance(m["value"], int | float)
    assert smoke_demo.failed == []


def test_stage_metrics_are_the_ones_the_systems_measured(smoke_demo):
    report = json.loads(smoke_demo.report_json.read_text())
    stages = {s["name"]: s for s in report["stages"]}
    names = {n: [m["name"] for m in s["metrics"]] for n, s in stages.items()}
    assert any("image PSNR" in n for n in names["tokenizer"])
    assert any("video PSNR" in n for n in names["tokenizer"])
    for who in ("shipped LVM", "trained here"):  # the shipped model is evaluated, the smoke profile also trains one
        assert any(n.startswith(who) and "perplexity" in n for n in names["lvm"])
        assert any(n.startswith(who) and "next frame" in n for n in names["lvm"])
        assert any(n.startswith(who) and "analogy" in n for n in names["lvm"])
    assert any("masked-token accuracy" in n for n in names["maskgit"])
    assert any("image → text" in n for n in names["transfusion"])
    assert any("text → image" in n for n in names["transfusion"])
    assert any("merge" in n for n in names["univi"]) and any("pool" in n for n in names["univi"])
    for who in ("shipped model: ", "trained here: "):
        assert any(n.startswith(who + "videos:") for n in names["univi"])
        assert any(n.startswith(who + "images:") and "merge" in n for n in names["univi"])
    assert any("bits per token" in n for n in names["digit"])
    # the numbers in report.json are the ones the stage's own eval files hold
    lvm_eval = json.loads((smoke_demo.out / "lvm" / "shipped" / "eval.json").read_text())
    ppl = next(m for m in stages["lvm"]["metrics"] if m["name"] == "shipped LVM: next visual id perplexity")
    assert ppl["value"] == pytest.approx(lvm_eval["next_id"]["perplexity"])
    assert ppl["baselines"]["unigram"] == pytest.approx(lvm_eval["next_id"]["unigram_perplexity"])
    assert ppl["beats"] == (ppl["value"] < ppl["baselines"]["unigram"])
    # loss curves come from the trainers' logs
    assert stages["lvm"]["curves"] and stages["maskgit"]["curves"]


def test_html_is_self_contained(smoke_demo):
    page = smoke_demo.report_html.read_text()
    for name in STAGES:
        assert f'id="stage-{name}"' in page
    assert "<script" not in page.lower()
    # nothing to fetch: every src is inline data, no stylesheet or font links
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    n_pictures = sum(len(s["pictures"]) for s in json.loads(smoke_demo.report_json.read_text())["stages"])
    assert len(srcs) == n_pictures


def test_failing_stage_is_reported_and_others_still_run(tmp_path, monkeypatch):
    import vistok.demo.stages as stages_mod

    def boom(ctx):
        raise RuntimeError("deliberate failure")

    monkeypatch.setitem(stages_mod.STAGES, "lvm", ("LVM", boom))
    run = run_demo(DemoConfig(out=str(tmp_path), profile="smoke", only=("lvm", "tokenizer"), progress=False))
    report = json.loads(run.report_json.read_text())
    by = {s["name"]: s for s in report["stages"]}
    assert by["lvm"]["status"] == "failed" and "deliberate failure" in by["lvm"]["error"]
    assert by["tokenizer"]["status"] == "ok"
    assert run.failed == ["lvm"]
    assert "deliberate failure" in run.report_html.read_text()


def test_cli_exit_code_and_only(tmp_path, monkeypatch, capsys):
    from vistok.cli import main

    assert main(["demo", "--profile", "smoke", "--only", "tokenizer", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["tokenizer"]
    assert main(["demo", "--only", "nonsense", "--out", str(tmp_path)]) == 2
    assert "nonsense" in capsys.readouterr().err

    import vistok.demo.stages as stages_mod

    monkeypatch.setitem(stages_mod.STAGES, "tokenizer", ("T", lambda ctx: 1 / 0))
    assert main(["demo", "--profile", "smoke", "--only", "tokenizer", "--out", str(tmp_path), "--quiet"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "precious.txt").write_text("keep me")
    run = run_demo(DemoConfig(out=str(tmp_path), profile="smoke", only=("tokenizer",), progress=False))
    assert run.failed == ["tokenizer"]
    assert "not written by vistok demo" in run.stages[0].error
    assert (tmp_path / "tokenizer" / "precious.txt").read_text() == "keep me"


def test_changed_settings_restart_the_stage(tmp_path):
    from vistok.demo.runner import STAMP, _prepare_stage_dir

    d = tmp_path / "lvm"
    _prepare_stage_dir(d, {"a": 1}, fresh=False)
    (d / "ckpt.pt").write_text("x")
    _prepare_stage_dir(d, {"a": 1}, fresh=False)
    assert (d / "ckpt.pt").exists()  # same settings: resume
    _prepare_stage_dir(d, {"a": 2}, fresh=False)
    assert not (d / "ckpt.pt").exists() and json.loads((d / STAMP).read_text()) == {"a": 2}


def test_config_validation():
    with pytest.raises(ValueError, match="profile"):
        DemoConfig(profile="huge")
    with pytest.raises(ValueError, match="--only"):
        DemoConfig(only=("tokenizer", "gan"))
    assert set(PROFILES["default"]) == set(STAGES) == set(PROFILES["full"]) == set(PROFILES["smoke"])


def test_metric_verdicts():
    assert Metric("acc", 0.5, {"a": 0.2, "b": 0.4}).beats is True
    assert Metric("acc", 0.3, {"a": 0.2, "b": 0.4}).beats is False
    assert Metric("ppl", 10.0, {"a": 20.0}, higher_is_better=False).beats is True
    assert Metric("ppl", 10.0, {}).beats is None
    assert Metric("ppl", None, {"a": 1.0}).beats is None
    assert Metric("x", float("nan"), {"a": 1.0}).beats is None


def test_report_writer_escapes_and_keeps_json_plain(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "p.png")
    stage = StageResult(
        "x", "<b>title</b>", metrics=[Metric("m", float("inf"), {"base": 1.0})], pictures=[Picture("p.png", "a & b")]
    )
    json_path, html_path = write_report(tmp_path, {"profile": "smoke"}, [stage])
    data = json.loads(json_path.read_text())
    assert data["stages"][0]["metrics"][0]["value"] is None  # inf is not JSON
    page = html_path.read_text()
    assert "&lt;b&gt;title&lt;/b&gt;" in page and "a &amp; b" in page and "<b>title</b>" not in page
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_reproduce_commands_parse(smoke_demo):
    """Every "reproduce at a larger scale" command is a valid vistok command line (flags and all)."""
    import shlex

    from vistok.cli import build_parser

    parser = build_parser(full=True)
    report = json.loads(smoke_demo.report_json.read_text())
    commands = [c for s in report["stages"] for c in s["commands"]]
    assert commands
    for command in commands:
        argv = shlex.split(command, comments=True)
        assert argv[0] == "vistok", command
        try:
            parser.parse_args(argv[1:])
        except SystemExit as e:  # argparse exits on a bad command line
            raise AssertionError(f"does not parse: {command}") from e
