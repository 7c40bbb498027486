"""The README's GPU section is what benchmark_report makes of the committed CSVs: figures never typed by hand."""

from f2llm_lib.bench.report import (
    CPU_END,
    CPU_START,
    cpu_section,
    gpu_section,
    latest_gpu_run,
    readme_block,
)


def test_readme_gpu_section_is_generated_from_the_committed_csv():
    assert readme_block() == gpu_section(), "README drifted from benchmarks/gpu: run `make readme-report`"


def test_gpu_run_names_its_machine_and_versions():
    environment = (latest_gpu_run() / "environment.txt").read_text()
    assert "NVIDIA" in environment and "driver" in environment.lower()
    assert "torch" in environment and "triton" in environment and "matmul_bf16_tflops" in environment


def test_readme_cpu_section_is_generated_from_the_committed_csvs():
    assert readme_block(start=CPU_START, end=CPU_END) == cpu_section(), "README drifted: run `make readme-report`"
    assert "loader start" in cpu_section()


def test_executed_copies_and_recorded_results_are_the_readme_runs():
    """Teachers read docs/executed/ before a workshop, and notebook 02 shows docs/recorded/ where Triton does not
    import: both come from the run the README's block quotes (make readme-report writes all three), and the copies
    show no machine's absolute paths."""
    import json
    import re

    from f2llm_lib.paths import NOTEBOOK_DIR, REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    run = re.search(r"From `make run` \((\S+?)\)", readme).group(1)
    executed = REPO_ROOT / "docs" / "executed"
    assert (executed / "RUN").read_text().strip() == run, "docs/executed/ drifted from the README: make readme-report"
    recorded = json.loads((REPO_ROOT / "docs" / "recorded" / "02_fused_contrastive_loss.json").read_text())
    assert recorded["run"] == run
    workshop = (REPO_ROOT / "docs" / "WORKSHOP.md").read_text()
    times = workshop.split("<!-- workshop-times:start -->")[1].split("<!-- workshop-times:end -->")[0]
    assert f"`make run` ({run})" in times, "the workshop's times drifted from the README's run: make readme-report"
    for notebook in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        text = (executed / notebook.name).read_text()
        absolute = re.search(r"(/tmp/|/root/|/home/|/Users/|/work/)[^\s\"']*", text)
        assert not absolute, f"{notebook.name} shows a machine path: {absolute.group(0)}"
        assert '"output_type"' in text, f"{notebook.name}: no outputs (an executed copy is what teachers read)"
