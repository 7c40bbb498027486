"""Every notebook: outputs stripped in git, one typed parameters cell, and it runs headless (smoke profile)."""

import json

import nbformat
import pytest

from f2llm_lib.notebook_runner import all_notebooks, load_profile, read_parameters, run_profile

NOTEBOOKS = all_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ should hold the numbered notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells), "strip outputs before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with an H1"
    params = read_parameters(path)
    assert "OUTPUT_DIR" in params
    for line in tagged[0].source.splitlines():
        if line.strip():
            assert ":" in line.split("=")[0] and "#" in line, f"typed scalar with a comment: {line!r}"
    assert "write_results(out_dir" in code_cells[-1].source, "the last cell writes the notebook's results as JSON"
    sources = "\n".join(c.source for c in nb.cells)
    assert "## " in sources and "Exercises" in sources and "Key takeaways" in sources, "exercises and takeaways"
    assert "SOLUTIONS" in params, "a SOLUTIONS parameter fills in the exercises' reference answers"
    # papermill's own reader (papermill --help-notebook, its "unknown parameter" warning) must see every one
    from papermill.translators import PythonTranslator

    seen = {p.name for p in PythonTranslator.inspect(tagged[0])}
    assert seen == set(params), f"papermill cannot parse {set(params) - seen} (no '=' inside the comment)"


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu", "gpu-qwen3"])
def test_profiles_only_use_declared_parameters(profile):
    for path in NOTEBOOKS:
        load_profile(profile, path)


@pytest.mark.notebooks
def test_smoke_profile_runs_every_notebook_chained(tmp_path):
    run_dir = run_profile("smoke", run_dir=tmp_path)
    results = {}
    for path in NOTEBOOKS:
        results[path.stem] = json.loads((tmp_path / path.stem / "results.json").read_text())
        assert results[path.stem]["notebook"] == path.stem
        verdicts = results[path.stem]["exercises"]
        assert len(verdicts) >= 2 and set(verdicts.values()) == {"passed"}, (path.stem, verdicts)  # SOLUTIONS on
    # chained: 01's tokenized data trained 03, whose checkpoint 04 evaluated
    assert results["03_multi_gpu_finetuning"]["data_dir"] == results["01_data_curation"]["tokenized_dir"]
    # and the backbone whose tokenizer made 01's data is the one 03 trains and 04 evaluates
    assert results["01_data_curation"]["backbone"] == results["03_multi_gpu_finetuning"]["backbone"] \
        == results["04_mteb_evaluation"]["backbone"] == "tiny-qwen3"
    assert results["04_mteb_evaluation"]["checkpoint"] == results["03_multi_gpu_finetuning"]["checkpoint"]
    assert {r["model"] for r in results["04_mteb_evaluation"]["rows"]} >= {"base (untrained)", "finetuned"}
    report = (run_dir / "report.md").read_text()
    assert "| finetuned |" in report and "Wall time per notebook" in report
    timings = json.loads((run_dir / "timings.json").read_text())
    print(timings)
    assert sum(timings["seconds"].values()) < 360, "the smoke profile of all notebooks must stay under 6 minutes"


def test_gpu_qwen3_profile_names_a_slice_of_mteb_eng_v2():
    import mteb

    params = load_profile("gpu-qwen3", next(p for p in NOTEBOOKS if p.stem == "04_mteb_evaluation"))
    names = {t.metadata.name for t in mteb.get_benchmark("MTEB(eng, v2)").tasks}
    assert params["RUN_HUB"] and set(params["HUB_TASKS"].split(",")) <= names
