"""The interactive path: a Jupyter server from this environment lists the f2llm kernel and serves the notebooks, and a
kernel it starts imports the library; and a notebook run by plain papermill from the repository root writes inside
the repository (OUTPUT_DIR is resolved against the notebooks folder, not the caller's working directory)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from f2llm_lib.paths import NOTEBOOK_DIR, REPO_ROOT

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, token: str, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture
def server():
    lab = VENV_BIN / "jupyter-lab"
    if not lab.exists():
        pytest.skip("JupyterLab is not installed in this environment (make setup installs it)")
    port, token = _free_port(), secrets.token_hex(16)
    proc = subprocess.Popen([str(lab), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             f"--IdentityProvider.token={token}", f"--notebook-dir={NOTEBOOK_DIR}",
                             "--ServerApp.open_browser=False"] + (["--allow-root"] if os.geteuid() == 0 else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # up to 60 s to start
            try:
                _get(f"{base}/api/status", token)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"the server exited: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("the Jupyter server did not answer within 60 s")
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _execute(base: str, token: str, kernel_id: str, code: str, timeout: float = 90.0) -> str:
    """Run ``code`` in a server kernel through its websocket channel; return what it printed."""
    import websocket

    ws = websocket.create_connection(f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels?token={token}",
                                     timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                                       "msg_type": "execute_request", "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False, "store_history": False,
                                        "user_expressions": {}, "allow_stdin": False}}))
        printed, replied, idle, deadline = [], False, False, time.monotonic() + timeout
        while time.monotonic() < deadline and not (replied and idle):  # shell reply and iopub output come apart
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                printed.append(message["content"]["text"])
            elif kind == "error":
                raise AssertionError(f"the kernel raised {message['content']['ename']}: "
                                     f"{message['content']['evalue']}")
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
        if replied and idle:
            return "".join(printed)
        raise AssertionError(f"no reply from the kernel within {timeout} s")
    finally:
        ws.close()


def test_jupyter_server_lists_the_kernel_serves_the_notebooks_and_runs_the_library(server):
    base, token = server
    specs = _get(f"{base}/api/kernelspecs", token)["kernelspecs"]
    assert "f2llm" in specs, f"the f2llm kernel is not registered: {sorted(specs)}"
    listing = {item["name"] for item in _get(f"{base}/api/contents", token)["content"]}
    assert {p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")} <= listing
    kernel = _get(f"{base}/api/kernels", token, "POST", {"name": "f2llm"})
    try:
        printed = _execute(base, token, kernel["id"], "import f2llm_lib, sys; print('ok', f2llm_lib.__name__, "
                                                       "sys.executable)")
        assert printed.startswith("ok f2llm_lib")
        assert str(VENV_BIN.parent) in printed  # the kernel runs this environment's Python
    finally:
        _get(f"{base}/api/kernels/{kernel['id']}", token, "DELETE")


def test_plain_papermill_from_the_repository_root_writes_inside_the_repository(tmp_path):
    executed = tmp_path / "out.ipynb"
    expected = NOTEBOOK_DIR / "../runs/interactive/00_foundation_to_feature/results.json"
    expected.resolve().unlink(missing_ok=True)
    outside = REPO_ROOT.parent / "runs" / "interactive" / "00_foundation_to_feature" / "results.json"
    before = outside.stat().st_mtime if outside.exists() else None
    out = subprocess.run([str(VENV_BIN / "papermill"), "notebooks/00_foundation_to_feature.ipynb", str(executed),
                          "-k", "f2llm", "-p", "BACKBONE", "tiny-qwen3", "--no-progress-bar"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected.resolve().is_file(), "results.json must land in <repo>/runs/interactive/, not outside the repo"
    assert (outside.stat().st_mtime if outside.exists() else None) == before, "wrote outside the repository"


@pytest.mark.notebooks
def test_lab_style_without_triton_every_notebook_runs_and_04_finds_03s_model(tmp_path, monkeypatch):
    """As a learner on a laptop without Triton (macOS) runs the smoke-sized notebooks in JupyterLab: one after
    another, each with its own defaults (no chained parameter), writing to sibling folders as runs/interactive/ does,
    from a working directory that is neither the repository nor notebooks/, with ``import triton`` failing in the
    kernel and in every process it starts. Every notebook must finish; 02 shows the recorded Triton results; 03 must
    train on 01's data with 01's backbone; 04 must find 03's model, evaluate base against finetuned at the
    checkpoint's depth, and score 03's run on the curve."""
    import papermill

    from f2llm_lib.embedder.backbones import layer_count
    from f2llm_lib.tooling.notebook_runner import all_notebooks, load_profile

    blocker = tmp_path / "blocker" / "triton"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('triton is blocked for this test, as on macOS')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker.parent))  # inherited by the kernels and the training processes
    interactive = tmp_path / "interactive"
    results = {}
    for notebook in all_notebooks():
        parameters = {**load_profile("smoke", notebook), "OUTPUT_DIR": str(interactive / notebook.stem)}
        papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters=parameters,
                                   kernel_name="f2llm", cwd=str(tmp_path), progress_bar=False)
        results[notebook.stem] = json.loads((interactive / notebook.stem / "results.json").read_text())
    kernels = results["02_fused_contrastive_loss"]
    assert kernels["triton"] is False and len(kernels["steps"]) == 4 and kernels["compiled_kernels_sm90"] == []
    assert {"reference", "chunked", "triton"} <= {row["impl"] for row in kernels["accuracy_table"]}
    assert "[skipped] Triton does not import" in (tmp_path / "02_fused_contrastive_loss.ipynb").read_text()
    curation, training, evaluation = (results[s] for s in ("01_data_curation", "03_multi_gpu_finetuning",
                                                           "04_mteb_evaluation"))
    assert training["data_dir"] == curation["tokenized_dir"] and training["backbone"] == curation["backbone"]
    assert evaluation["checkpoint"] == training["checkpoint"]
    assert evaluation["num_layers"] == layer_count(training["checkpoint"])
    models = {row["model"] for row in evaluation["rows"]}
    assert {"base (untrained)", "finetuned"} <= models, models
    assert evaluation["curve"], "04 scores the checkpoints of 03's run"
    assert "CHECKPOINT is empty: taking" in (tmp_path / "04_mteb_evaluation.ipynb").read_text()


def test_a_new_run_folder_each_time_and_none_removed(tmp_path):
    from f2llm_lib.train.launch import new_run_dir

    first = new_run_dir(tmp_path, "correct")
    (first / "metrics.jsonl").write_text("finished\n")
    second, third = new_run_dir(tmp_path, "correct"), new_run_dir(tmp_path, "correct")  # within the same second
    assert len({first, second, third}) == 3 and (first / "metrics.jsonl").read_text() == "finished\n"
    for path in NOTEBOOK_DIR.glob("*.ipynb"):
        assert "rmtree" not in path.read_text() and "fresh_run_dir" not in path.read_text(), path.name


@pytest.mark.parametrize("where", ["repository", "notebooks", "elsewhere"])
def test_path_parameters_mean_the_same_from_any_working_directory(tmp_path, monkeypatch, where):
    from f2llm_lib.paths import notebook_path

    monkeypatch.chdir({"repository": REPO_ROOT, "notebooks": NOTEBOOK_DIR, "elsewhere": tmp_path}[where])
    assert notebook_path("../runs/interactive/01_data_curation/data/tokenized") == \
        REPO_ROOT / "runs" / "interactive" / "01_data_curation" / "data" / "tokenized"
    assert notebook_path("") is None and notebook_path(tmp_path / "x") == tmp_path / "x"
    assert notebook_path("data.jsonl") == NOTEBOOK_DIR / "data.jsonl", "relative to notebooks/, as OUTPUT_DIR is"
