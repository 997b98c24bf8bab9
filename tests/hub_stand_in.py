"""A local stand-in for the Hub endpoints an upload and a download use.

Uploads: create a repo, preupload, commit. Downloads: a repo's info (its commit and files), its file tree, and its
files (``HEAD`` / ``GET .../resolve/REV/PATH`` with the commit and etag headers ``hf_hub_download`` reads).
`huggingface_hub`'s real client talks to it over HTTP on 127.0.0.1; committed files land in a folder per repository,
so a test can load exactly what was uploaded, through the real Hub code path (cache included).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml


class HubStandIn:
    """An HTTP server on a free loopback port that records repositories, commits and request headers.

    Args:
        root: Folder that receives one sub-folder per repository (``org--name``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.created: list[dict] = []
        self.authorization_headers: list[str | None] = []
        self.requests: list[str] = []
        self.validated_cards: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send_file(self, repo_id: str, relative: str, with_body: bool) -> None:
                path = stand_in.repo_folder(repo_id) / relative
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", stand_in.commit(repo_id))
                self.send_header("ETag", f'"{_blob_id(data)}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def _download(self, with_body: bool) -> None:
                path = self.path.split("?")[0]
                stand_in.requests.append(f"{self.command} {path}")
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if resolve is not None:
                    return self._send_file(resolve[1], resolve[3], with_body)
                info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
                if info is not None and stand_in.repo_folder(info[1]).is_dir():
                    return self._reply(200, stand_in.info(info[1]))
                tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/.*)?", path)
                if tree is not None and stand_in.repo_folder(tree[1]).is_dir():
                    return self._reply(200, stand_in.tree(tree[1]))
                return self._reply(404, {"error": f"not served: {path}"})

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._download(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._download(with_body=False)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                stand_in.requests.append(f"POST {self.path}")
                stand_in.authorization_headers.append(self.headers.get("Authorization"))
                path = self.path.split("?")[0]
                if path == "/api/validate-yaml":
                    # The Hub checks a model card's metadata before the commit; a YAML error is a 400.
                    content = json.loads(body)["content"]
                    stand_in.validated_cards.append(content)
                    try:
                        yaml.safe_load(content.split("---")[1])
                    except (yaml.YAMLError, IndexError) as error:
                        return self._reply(400, {"errors": [{"message": str(error)}]})
                    return self._reply(200, {"warnings": []})
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    stand_in.created.append(payload)
                    repo_id = f"{payload['organization']}/{payload['name']}"
                    return self._reply(200, {"url": f"{stand_in.endpoint}/{repo_id}", "name": repo_id})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if match is None:
                    return self._reply(404, {"error": f"not served: {path}"})
                repo_id, action, _ = match.groups()
                if action == "preupload":
                    files = json.loads(body)["files"]
                    modes = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                    return self._reply(200, {"files": modes})
                target = stand_in.repo_folder(repo_id)
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        file_path = target / item["value"]["path"]
                        file_path.parent.mkdir(parents=True, exist_ok=True)
                        file_path.write_bytes(base64.b64decode(item["value"]["content"]))
                commit_url = f"{stand_in.endpoint}/{repo_id}/commit/{'0' * 40}"
                return self._reply(200, {"commitUrl": commit_url, "commitOid": "0" * 40})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def repo_folder(self, repo_id: str) -> Path:
        """The folder holding what was committed to ``repo_id``."""
        return self.root / repo_id.replace("/", "--")

    def _files(self, repo_id: str) -> dict[str, bytes]:
        folder = self.repo_folder(repo_id)
        return {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }

    def commit(self, repo_id: str) -> str:
        """The repo's current commit id: a digest of its files (a new upload gives a new one)."""
        files = self._files(repo_id)
        return hashlib.sha1(
            "".join(f"{name}:{_blob_id(data)};" for name, data in files.items()).encode()
        ).hexdigest()

    def info(self, repo_id: str) -> dict:
        """What ``model_info`` / ``repo_info`` get: the commit and the file names."""
        siblings = [{"rfilename": name} for name in self._files(repo_id)]
        return {
            "id": repo_id,
            "modelId": repo_id,
            "sha": self.commit(repo_id),
            "private": False,
            "siblings": siblings,
        }

    def tree(self, repo_id: str) -> list[dict]:
        """What ``list_repo_tree(recursive=True)`` gets: every file with its size and git blob id."""
        return [
            {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
            for name, data in self._files(repo_id).items()
        ]

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _blob_id(data: bytes) -> str:
    """The git object id of a file's content, as the Hub reports it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
