import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from f2llm_lib.tooling import notebook_runner
from f2llm_lib.tooling.notebook_runner import (
    NotebookParameterError,
    NotebookRunError,
    read_parameters,
    run_notebook,
    validate_parameters,
)


def _write_notebook(path, body: str):
    params = new_code_cell('COUNT: int = 2  # how many\nNAME: str = "x"  # a name\nOUTPUT_DIR: str = "out"')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell("print('first cell ok')"), new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "f2llm", "display_name": "f2llm", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_reads_typed_parameters(tmp_path):
    params = read_parameters(_write_notebook(tmp_path / "07_demo.ipynb", "pass"))
    assert {p: (v.default, v.type_name) for p, v in params.items()} == {
        "COUNT": (2, "int"), "NAME": ("x", "str"), "OUTPUT_DIR": ("out", "str")}


def test_unknown_parameter_names_notebook_and_key(tmp_path):
    nb = _write_notebook(tmp_path / "07_demo.ipynb", "pass")
    with pytest.raises(NotebookParameterError, match=(
            r"07_demo.ipynb \(from parameters\): unknown parameter 'CUONT' \(did you mean COUNT\?\)")):
        validate_parameters(nb, {"CUONT": 3})


def test_wrong_type_is_rejected(tmp_path):
    nb = _write_notebook(tmp_path / "07_demo.ipynb", "pass")
    with pytest.raises(NotebookParameterError, match=(
            r"07_demo.ipynb \(from parameters\): COUNT must be int, got str '3'")):
        validate_parameters(nb, {"COUNT": "3"})
    with pytest.raises(NotebookParameterError, match=r"must be int, got bool"):
        validate_parameters(nb, {"COUNT": True})


def test_profile_with_misspelt_key_fails_before_running(tmp_path, monkeypatch):
    nb = _write_notebook(tmp_path / "07_demo.ipynb", "pass")
    (tmp_path / "params" / "smoke").mkdir(parents=True)
    (tmp_path / "params" / "smoke" / "07_demo.yaml").write_text("NAME: y\nCOUNTT: 1\n")
    monkeypatch.setattr(notebook_runner, "PARAMS_DIR", tmp_path / "params")
    with pytest.raises(NotebookParameterError, match=(
            r"07_demo.ipynb \(from .*07_demo.yaml\): unknown parameter 'COUNTT'")):
        notebook_runner.run_profile("smoke", [nb], run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "07_demo.ipynb").exists()
    with pytest.raises(NotebookParameterError, match="unknown profile 'fast'"):
        notebook_runner.load_profile("fast", nb)


def test_failing_cell_is_named_and_cli_exits_nonzero(tmp_path, capsys):
    nb = _write_notebook(tmp_path / "07_demo.ipynb", "raise ValueError(f'boom {COUNT}')")
    with pytest.raises(NotebookRunError, match=r"07_demo.ipynb failed at cell 2 .*ValueError: boom 5"):
        run_notebook(nb, tmp_path / "run", {"COUNT": 5})
    code = notebook_runner.main([str(nb), "--profile", "smoke", "--run-dir", str(tmp_path / "run2")])
    assert code == 1
    assert "07_demo.ipynb failed at cell" in capsys.readouterr().err


def test_successful_run_injects_parameters_and_output_dir(tmp_path):
    nb = _write_notebook(tmp_path / "07_demo.ipynb",
                         "from pathlib import Path\nPath(OUTPUT_DIR, 'seen.txt').write_text(f'{NAME}-{COUNT}')")
    executed = run_notebook(nb, tmp_path / "run", {"NAME": "hello"})
    assert executed.exists()
    assert (tmp_path / "run" / "07_demo" / "seen.txt").read_text() == "hello-2"
