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
