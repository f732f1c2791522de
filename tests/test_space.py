"""`preim3d space build` and `preim3d space push`: the web demo as a Hugging Face Space.

Nothing leaves this machine: the built Space runs on 127.0.0.1, and the upload goes to a local HTTP
server standing in for the Hub (HF_ENDPOINT), which records what it was sent.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest
from demo_helpers import client_for, loopback_only, start_app, stop
from gradio_client import handle_file
from PIL import Image

from preim3d import cli
from preim3d.errors import Preim3DError
from preim3d.space import build_space

ROOT = Path(__file__).resolve().parents[1]


def test_the_built_space_runs_from_its_own_folder(tmp_path, tiny_bundle, astronaut_png):
    """What this proves: the folder `preim3d space build` writes is self-contained. Its app.py starts
    with the folder's own copies of preim3d and of the demo (the checkout's are not importable in the
    fresh virtual environment), takes its weights from the PREIM3D_WEIGHTS variable a Space sets, and
    answers /edit; every line of its requirements.txt is satisfied in that environment.

    What it does not prove: that the requirements install from PyPI. To stay fast and offline, the
    fresh environment sees this test environment's installed packages through a path file (not their
    .pth hooks, so not the editable preim3d), as --system-site-packages would.
    """
    space = build_space(tmp_path / "space", weights="someone/preim3d-weights")
    assert {p.name for p in space.iterdir()} == {
        "README.md", "app.py", "requirements.txt", "preim3d", "demo", "examples", "LICENSE",
    }  # fmt: skip
    front = (space / "README.md").read_text().split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", "license: other", "- someone/preim3d-weights"):
        assert line in front
    assert (
        'os.environ.setdefault("PREIM3D_WEIGHTS", "someone/preim3d-weights")'
        in (space / "app.py").read_text()
    )
    requirements = (space / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in requirements and not any(r.startswith(("gradio", "-e")) for r in requirements)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(fresh_site) / "outer-packages.pth").write_text("\n".join(outer) + "\n")
    check = """
import importlib.metadata, sys
from packaging.requirements import Requirement
for line in open("requirements.txt").read().split():
    r = Requirement(line)
    assert r.specifier.contains(importlib.metadata.version(r.name), prereleases=True), line
import preim3d, demo
print(preim3d.__file__, demo.__file__)
"""
    found = subprocess.run(
        [python, "-c", check], cwd=space, check=True, capture_output=True, text=True
    ).stdout.split()
    assert all(Path(f).is_relative_to(space) for f in found), found

    process, config = start_app(space, tmp_path, python=python, PREIM3D_WEIGHTS=str(tiny_bundle))
    try:
        with loopback_only():
            image = client_for(config["url"]).predict(
                photo=handle_file(astronaut_png), edits={"smile": 2}, yaw=10, api_name="/edit"
            )
        assert Image.open(image).size == (128, 128) and np.asarray(Image.open(image)).std() > 1
    finally:
        output = stop(process)
    assert f"serving Editor(device=cpu, image 128px, 6 directions, source='{tiny_bundle}" in output


def test_build_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Preim3DError, match="is not empty"):
        build_space(tmp_path)
    assert cli.main(["space", "build", str(tmp_path)]) == 1


class FakeHub:
    """Answers the Hub API calls `preim3d space push` makes, like huggingface.co, and records them.

    Every file is accepted as a regular (non-LFS) upload, so commits carry their files inline.
    """

    def __init__(self):
        self.repos: list[dict] = []  # create requests
        self.commits: dict[str, dict[str, bytes]] = {}  # "spaces/owner/name" -> {path: content}
        self.variables: dict[str, dict] = {}
        self.unexpected: list[str] = []
        self.validated: list[str] = []
        self.tokens: set[str] = set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                owner.tokens.add(self.headers.get("Authorization", ""))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    request = json.loads(body)
                    owner.repos.append(request)
                    kind = request.get("type", "model")
                    prefix = "" if kind == "model" else f"{kind}s/"
                    return self._json(
                        {"url": f"{owner.url}/{prefix}{request['organization']}/{request['name']}"}
                    )
                if parts == ["api", "validate-yaml"]:  # the README's front matter, checked before an upload
                    owner.validated.append(json.loads(body)["repoType"])
                    return self._json({"errors": [], "warnings": []})
                if parts[0] == "api" and len(parts) >= 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        }
                    )
                if parts[0] == "api" and len(parts) >= 6 and parts[4] == "commit":
                    repo = "/".join(parts[1:4])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            content = base64.b64decode(item["value"]["content"])
                            owner.commits.setdefault(repo, {})[item["value"]["path"]] = content
                    return self._json(
                        {"commitUrl": f"{owner.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
                    )
                if parts[:2] == ["api", "spaces"] and parts[-1] == "variables":
                    request = json.loads(body)
                    owner.variables["/".join(parts[2:4])] = request
                    return self._json({request["key"]: {"value": request["value"]}})
                owner.unexpected.append(f"POST {self.path}")
                self.send_error(404)

            def do_GET(self):
                owner.unexpected.append(f"GET {self.path}")
                self.send_error(404)

            def _json(self, value):
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def hub():
    h = FakeHub()
    yield h
    h.httpd.shutdown()
    h.httpd.server_close()


def test_push_uploads_the_bundle_creates_the_space_and_sets_the_weights(hub, tiny_bundle):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "PREIM3D_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token", HF_HUB_DISABLE_XET="1")
    command = [sys.executable, "-m", "preim3d", "space", "push", "someone/face-editor"]
    command += ["--weights-repo", "someone/preim3d-weights", "--bundle", str(tiny_bundle), "--private"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not [call for call in hub.unexpected if call.startswith("POST")]  # nothing else was sent

    assert [(r["name"], r["organization"], r.get("type", "model"), r.get("sdk")) for r in hub.repos] == [
        ("preim3d-weights", "someone", "model", None),
        ("face-editor", "someone", "space", "gradio"),
    ]
    assert all(r["visibility"] == "private" for r in hub.repos)
    bundle = hub.commits["models/someone/preim3d-weights"]
    assert bundle == {p.name: p.read_bytes() for p in tiny_bundle.iterdir()}
    space = hub.commits["spaces/someone/face-editor"]
    assert space["app.py"].startswith(b'"""preim3d') and b"sdk: gradio" in space["README.md"]
    assert {"requirements.txt", "preim3d/pipeline.py", "demo/ui.py", "examples/astronaut.png"} <= set(space)
    assert space["preim3d/pipeline.py"] == (ROOT / "preim3d" / "pipeline.py").read_bytes()
    assert hub.variables == {
        "someone/face-editor": {"key": "PREIM3D_WEIGHTS", "value": "someone/preim3d-weights"}
    }
    assert hub.tokens == {"Bearer hf_test_token"} and "space" in hub.validated
    assert "HF_TOKEN" in result.stdout  # a private weights repo needs a token secret on the Space: said
