"""`make lab`: JupyterLab opens the jupytext chapter notebooks as notebooks, on the venv's kernel.

The server is started exactly as `make lab` starts it (headless, on a free port, with a token,
in its own process group, stopped by its PID), with Jupyter's user folders pointed at tmp_path
so neither the test nor the user's home configuration affect each other.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import urllib.request
import uuid
from pathlib import Path

import jupytext
import nbformat
import pytest

from browser import free_port, start_server, stop_server

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
CHAPTER = "notebooks/01_data.py"

pytestmark = pytest.mark.slow


class Lab:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def request(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if shutil.which("make") is None or not (VENV / "bin" / "jupyter").exists():
        pytest.skip("needs make and the project's venv (.venv/bin/jupyter): run `make venv`")
    home = tmp_path_factory.mktemp("lab-home")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), IPYTHONDIR=str(home / "ipython"))
    env.pop("JUPYTER_CONFIG_PATH", None)
    lab_args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
                f"--IdentityProvider.token={token}")
    # -o: never reinstall the venv from inside a test (make test has done it).
    cmd = ["make", "--no-print-directory", "-s", "-o", ".venv/.installed", "lab", f"LAB_ARGS={lab_args}"]
    base = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, f"{base}/api/status?token={token}", cwd=REPO, env=env, log=home / "lab.log",
                        timeout=120)
    try:
        yield Lab(base, token)
    finally:
        stop_server(proc)


def test_chapter_opens_as_notebook_with_project_kernel(lab):
    model = lab.request("GET", f"/api/contents/{CHAPTER}?type=notebook&content=1")
    assert model["type"] == "notebook" and model["format"] == "json" and model["path"] == CHAPTER
    nb = nbformat.from_dict(model["content"])
    expected = jupytext.read(REPO / CHAPTER)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in expected.cells]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")

    specs = lab.request("GET", "/api/kernelspecs")
    assert specs["default"] == "python3" and "python3" in specs["kernelspecs"]


def test_saving_writes_the_same_text_and_no_outputs(lab):
    """Saving a chapter from Lab (here with an output added) rewrites the .py byte for byte: no
    outputs, no version lines in the header. Saved to a gitignored copy (test-artifacts/), never over the chapter."""
    model = lab.request("GET", f"/api/contents/{CHAPTER}?type=notebook&content=1")
    code = next(c for c in model["content"]["cells"] if c["cell_type"] == "code")
    code["outputs"] = [dict(output_type="stream", name="stdout", text="an output\n")]
    copy = "test-artifacts/lab/chapter.py"
    (REPO / copy).parent.mkdir(parents=True, exist_ok=True)
    try:
        lab.request("PUT", f"/api/contents/{copy}", dict(type="notebook", format="json",
                                                         content=model["content"]))
        assert (REPO / copy).read_text() == (REPO / CHAPTER).read_text()
    finally:
        shutil.rmtree((REPO / copy).parent, ignore_errors=True)


def test_lab_settings_open_py_as_notebook(lab):
    """The double-click viewer for .py is jupytext's notebook (jupyter-config/labconfig)."""
    plugin = lab.request("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    viewers = plugin["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("python") == "Jupytext Notebook"


async def _execute(lab: Lab, kernel_id: str, code: str, timeout: float = 120) -> tuple[str, dict]:
    """Run `code` on a kernel over the server's websocket; returns (stdout, execute_reply content)."""
    from tornado.websocket import websocket_connect

    ws_url = lab.base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?token={lab.token}"
    conn = await websocket_connect(ws_url)
    msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": dict(msg_id=msg_id, msg_type="execute_request", username="test", session=session,
                       date="", version="5.3"),
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": dict(code=code, silent=False, store_history=False, user_expressions={}, allow_stdin=False,
                        stop_on_error=True)}))
    out, reply, idle = [], None, False
    try:
        while reply is None or not idle:
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            if raw is None:
                raise ConnectionError("kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                out.append("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    finally:
        conn.close()
    return "".join(out), reply


def test_data_chapter_runs_top_to_bottom_with_its_defaults(lab):
    """As a person would in Lab: the venv's python3 kernel, started in notebooks/, runs every cell
    of the data chapter with no parameters injected (params/default.yaml, the built-in synthetic
    data; this chapter writes nothing into runs/default)."""
    cells = [c.source for c in jupytext.read(REPO / CHAPTER).cells if c.cell_type == "code"]
    kernel = lab.request("POST", "/api/kernels", {"name": "python3", "path": "notebooks"})
    try:
        for i, source in enumerate(cells):
            out, reply = asyncio.run(_execute(lab, kernel["id"], source, timeout=300))
            assert reply["status"] == "ok", f"code cell {i}: {out[-3000:]}"
        out, reply = asyncio.run(_execute(lab, kernel["id"], "import os, sys\nprint(sys.prefix)\n"
                                          "print(os.getcwd())\nprint(params['run_name'], params['dataset'])"))
    finally:
        lab.request("DELETE", f"/api/kernels/{kernel['id']}")
    prefix, cwd, defaults = out.strip().splitlines()[-3:]
    assert Path(prefix).resolve() == VENV.resolve()
    assert Path(cwd).resolve() == (REPO / "notebooks").resolve()
    assert defaults == "default synthetic"
