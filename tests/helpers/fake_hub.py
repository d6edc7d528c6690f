"""An in-process fake of the Hugging Face Hub's HTTP API, on 127.0.0.1, for push and load tests without a network.

It serves what `huggingface_hub` and `transformers` call when creating a repo, committing files (every file in
"regular" mode, so no LFS or xet), opening a pull request, creating a branch, reading repo info and downloading
files. Every request is recorded with its headers, so tests can check which token was sent. huggingface_hub reads
`HF_ENDPOINT` when it is imported, so the client code under test runs in a subprocess pointed at `FakeHub.url`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class FakeRepo:
    private: bool = False
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})  # branch -> head commit
    pull_requests: int = 0


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, lower-cased headers)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[revision]

    def open_pull_request(self, repo_id: str) -> int:
        with self._lock:
            repo = self.repos[repo_id]
            repo.pull_requests += 1
            branch = f"refs/pr/{repo.pull_requests}"
            repo.branches[branch] = dict(repo.branches["main"])
            repo.commits[branch] = repo.commits["main"]
            return repo.pull_requests

    def commit(self, repo_id: str, revision: str, files: dict[str, bytes], deleted: list[str]) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            branch = repo.branches.setdefault(revision, dict(repo.branches["main"]))
            branch.update(files)
            for path in deleted:
                branch.pop(path, None)
            oid = hashlib.sha1(f"{repo_id}{revision}{len(self.requests)}{sorted(branch)}".encode()).hexdigest()
            repo.commits[revision] = oid
            return oid


def _split_api_path(path: str, verb: str) -> tuple[str, str] | None:
    """`/api/models/<owner>/<name>/<verb>/<rest>` -> (repo id, unquoted rest)."""
    marker = f"/{verb}/"
    if not path.startswith("/api/models/") or marker not in path:
        return None
    repo_id, rest = path[len("/api/models/") :].split(marker, 1)
    return unquote(repo_id), unquote(rest)


class _FakeHubHandler(BaseHTTPRequestHandler):
    hub: FakeHub  # set by `_handler_for`

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, json_body=None) -> None:
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_found(self, code: str = "RepoNotFound") -> None:
        self._reply(404, headers={"X-Error-Code": code}, json_body={"error": code})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        self.hub.requests.append((self.command, self.path, {key.lower(): value for key, value in self.headers.items()}))
        return parts.path, parse_qs(parts.query)

    def do_POST(self) -> None:
        path, query = self._record()
        body = self._body()
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = "/".join(filter(None, (payload.get("organization"), payload["name"])))
            if repo_id in self.hub.repos:
                return self._reply(409, json_body={"error": "exists", "url": f"{self.hub.url}/{repo_id}"})
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            self.hub.repos[repo_id] = FakeRepo(private=private)
            return self._reply(200, json_body={"url": f"{self.hub.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._reply(200, json_body={"errors": [], "warnings": []})
        if target := _split_api_path(path, "preupload"):
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._reply(200, json_body={"files": modes, "commitOid": "0" * 40})
        if target := _split_api_path(path, "branch"):
            repo_id, branch = target
            if repo_id not in self.hub.repos:
                return self._not_found()
            repo = self.hub.repos[repo_id]
            if branch in repo.branches:
                return self._reply(409, json_body={"error": "Reference already exists"})
            repo.branches[branch] = dict(repo.branches["main"])
            repo.commits[branch] = repo.commits["main"]
            return self._reply(200, json_body={})
        if path.startswith("/api/models/") and path.endswith("/discussions"):  # upload_folder's pull requests
            repo_id = unquote(path[len("/api/models/") : -len("/discussions")])
            if repo_id not in self.hub.repos:
                return self._not_found()
            return self._reply(200, json_body={"num": self.hub.open_pull_request(repo_id)})
        if target := _split_api_path(path, "commit"):
            repo_id, revision = target
            if repo_id not in self.hub.repos:
                return self._not_found()
            files, deleted = {}, []
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                elif entry["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(entry["value"]["path"])
            pr_url = None
            if query.get("create_pr") == ["1"]:  # create_commit's pull requests
                number = self.hub.open_pull_request(repo_id)
                revision, pr_url = f"refs/pr/{number}", f"{self.hub.url}/{repo_id}/discussions/{number}"
            oid = self.hub.commit(repo_id, revision, files, deleted)
            return self._reply(
                200,
                json_body={
                    "commitUrl": f"{self.hub.url}/{repo_id}/commit/{oid}",
                    "commitOid": oid,
                    "pullRequestUrl": pr_url,
                },
            )
        self._not_found("EntryNotFound")

    def _repo_info(self, repo_id: str, revision: str) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or revision not in repo.branches:
            return self._not_found("RepoNotFound" if repo is None else "RevisionNotFound")
        files = repo.branches[revision]
        self._reply(
            200,
            json_body={
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.commits[revision],
                "private": repo.private,
                "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())],
            },
        )

    def _resolve(self, path: str) -> None:
        repo_id, rest = path.lstrip("/").split("/resolve/", 1)
        repo = self.hub.repos.get(unquote(repo_id))
        rest = unquote(rest)
        if repo is None:
            return self._reply(401, headers={"X-Error-Code": "RepoNotFound"}, json_body={"error": "not found"})
        # the revision may contain slashes (refs/pr/1) and may be a commit id
        for branch, commit in repo.commits.items():
            for name in (branch, commit):
                if rest.startswith(name + "/"):
                    files = repo.branches[branch]
                    file_path = rest[len(name) + 1 :]
                    if file_path not in files:
                        return self._reply(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
                    data = files[file_path]
                    headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": commit}
                    return self._reply(200, data, headers)
        self._reply(404, headers={"X-Error-Code": "RevisionNotFound"}, json_body={"error": "revision"})

    def do_GET(self) -> None:
        path, _ = self._record()
        if "/resolve/" in path:
            return self._resolve(path)
        if target := _split_api_path(path, "discussions"):
            repo_id, number = target
            details = {
                "num": int(number),
                "title": "PR",
                "author": {"name": "someone"},
                "status": "draft",
                "createdAt": "2024-01-01T00:00:00.000Z",
                "repo": {"name": repo_id, "type": "model"},
                "isPullRequest": True,
                "events": [],
                "changes": {"base": "main"},
                "filesWithConflicts": [],
            }
            return self._reply(200, json_body=details)
        if target := _split_api_path(path, "revision"):
            return self._repo_info(*target)
        if path.startswith("/api/models/") and path.count("/") == 4:
            return self._repo_info(unquote(path[len("/api/models/") :]), "main")
        self._not_found("EntryNotFound")

    do_HEAD = do_GET


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    """A request handler class answering for `hub` (the server makes one handler per request)."""
    return type("Handler", (_FakeHubHandler,), {"hub": hub})
