"""Every notebook: outputs stripped in git, one typed parameters cell, and it runs headless (smoke profile)."""

import json

import nbformat
import pytest

from f2llm_lib.tooling.notebook_runner import all_notebooks, load_profile, read_parameters, run_profile

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
        assert len(verdicts) >= 3 and set(verdicts.values()) == {"passed"}, (path.stem, verdicts)  # SOLUTIONS on
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_typed_numbers_that_can_drift(path):
    """Times are measured (runs/<run>/timings.json, the README's generated blocks), never typed into a notebook; a
    number in the hardware table's profile column must be a value of that profile (or a parameter's default)."""
    import re

    nb = nbformat.read(path, as_version=4)
    durations = re.compile(r"(?<![\w.])\d[\d,.]*\s*(?:s|sec|seconds|min|minutes|hours?)\b|\babout \d")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            assert not durations.search(cell.source), f"cell {index} types a duration: {durations.search(cell.source)}"
    defaults = {str(p.default) for p in read_parameters(path).values()}
    for line in nb.cells[0].source.splitlines():
        profile = re.search(r"`(smoke|cpu|gpu|gpu-qwen3)`", line)
        if not line.startswith("|") or not profile:
            continue
        values = {str(v) for v in load_profile(profile.group(1), path).values()} | defaults
        column = line.strip("|").split("|")[1]
        for number in re.findall(r"(?<![\w.(])\d[\d,]*(?![\w.])", column):
            assert number.replace(",", "") in values, (
                f"{path.stem}: the {profile.group(1)} row says {number}, which is no value of ci/params/"
                f"{profile.group(1)}/{path.stem}.yaml nor a parameter default: {line.strip()}")


def test_readme_types_no_durations_outside_its_generated_blocks():
    import re

    from f2llm_lib.paths import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    for start, end in re.findall(r"(<!-- ([\w-]+):start -->)", text):
        text = text[:text.index(start)] + text[text.index(f"<!-- {end}:end -->"):]
    durations = re.compile(r"(?<![\w.])\d[\d,.]*\s*(?:s|sec|seconds|min|minutes|hours?|ms)\b|\babout \d")
    assert not durations.search(text), f"typed in the README: {durations.search(text).group(0)!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_fit_a_screen_and_sections_are_numbered(path):
    """A code cell is something a learner reads whole and edits: at most 40 lines (a plot that teaches may be drawn
    in the notebook; run plumbing stays in the library). Sections are numbered 1..n in order."""
    import re

    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert len(cell.source.splitlines()) <= 40, f"{path.stem}: cell {index} is longer than 40 lines"
            for plumbing in ("json.dump(", "open(", "shutil.", "os.makedirs", "mkdir("):
                assert plumbing not in cell.source, (
                    f"{path.stem}: cell {index} does run plumbing ({plumbing}): results and files go through "
                    "f2llm_lib (write_results, notebook_output_dir, the runner)")
    numbers = [int(m.group(1)) for cell in nb.cells if cell.cell_type == "markdown"
               for m in re.finditer(r"^## (\d+)\. ", cell.source, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.stem}: sections numbered {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_result_is_explained_with_numbers_read_at_run_time(path):
    """After the results, "what you should see" cells whose numbers come from the run (generated Markdown), never
    typed: at least one per notebook, and none in a markdown cell."""
    nb = nbformat.read(path, as_version=4)
    generated = [c for c in nb.cells if c.cell_type == "code" and "Markdown(" in c.source
                 and ("What you should see" in c.source or "Read aloud" in c.source or "What the model" in c.source)]
    assert len(generated) >= 2, f"{path.stem}: explain the results with generated Markdown cells"
    assert not any("What you should see" in c.source for c in nb.cells if c.cell_type == "markdown"), (
        f"{path.stem}: a 'what you should see' in a markdown cell types its numbers; generate it from the results")
