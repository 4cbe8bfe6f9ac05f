"""A small Hugging Face Hub-protocol server for tests, on loopback, in memory.

huggingface.co cannot be reached from our machines and no Hub-compatible server can be installed,
so the tests point the real `huggingface_hub` client (HF_ENDPOINT) at this one. It implements only
the calls the client makes for create_repo / upload_folder / snapshot_download / hf_hub_download /
Space variables, and answers them as the Hub does, errors included (401 without a valid token on
writes, 403 for a write to a namespace the token's user does not own, 404 with X-Error-Code for missing
repos, revisions and files, 409 with `url` for an existing repo). It stores what it is sent and checks
every LFS upload's sha256. As huggingface.co, it does not serve large (LFS) files itself: `resolve/`
answers 302 to a second loopback origin, the storage host, which sends the file with the storage
host's CORS headers.

    python -m tests.hub_server --port 8765      # run it by hand; token: hf_test_token
"""

import argparse
import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKEN = "hf_test_token"
USER = "test-user"
# A second account: its token reads everything public but may write only under its own name.
OTHER_TOKEN = "hf_other_token"
OTHER_USER = "other-user"
# timm's organisation, so that a test can publish ImageNet-style weights where timm's models look for them.
TIMM_TOKEN = "hf_timm_token"
USERS = {TOKEN: USER, OTHER_TOKEN: OTHER_USER, TIMM_TOKEN: "timm"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".png", ".jpg", ".jpeg", ".dcm", ".zip")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)


def hub_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    size: int
    blob_id: str
    content: bytes | None = None  # regular files
    lfs_oid: str | None = None  # LFS files: the content lives in the LFS store


@dataclass
class Commit:
    oid: str
    summary: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None = None
    commits: list[Commit] = field(default_factory=list)
    variables: dict[str, dict] = field(default_factory=dict)

    @property
    def head(self) -> Commit:
        return self.commits[-1]


class HubState:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def add_commit(self, repo: Repo, summary: str, files: dict[str, StoredFile]) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else ""
        digest = hashlib.sha1(f"{parent}{summary}{len(repo.commits)}{sorted(files)}".encode()).hexdigest()
        commit = Commit(digest, summary, files, hub_time())
        repo.commits.append(commit)
        return commit


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra or {}


def check_model_index(metadata: dict) -> None:
    """The shape huggingface_hub writes for `model-index` (see `metadata_eval_result`)."""
    model_index = metadata.get("model-index")
    if model_index is None:
        return
    if not isinstance(model_index, list) or not model_index:
        raise HubError(400, '"model-index" must be a non-empty list')
    for entry in model_index:
        if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("results"), list):
            raise HubError(400, '"model-index[]" entries need "name" and a "results" list')
        for result in entry["results"]:
            if not isinstance(result.get("task"), dict) or "type" not in result["task"]:
                raise HubError(400, '"model-index[].results[].task.type" is required')
            dataset = result.get("dataset")
            if not isinstance(dataset, dict) or not {"type", "name"} <= set(dataset):
                raise HubError(400, '"model-index[].results[].dataset" needs "type" and "name"')
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                raise HubError(400, '"model-index[].results[].metrics" must be a non-empty list')
            for metric in metrics:
                if "type" not in metric or not isinstance(metric.get("value"), (int, float)):
                    raise HubError(400, f'each metric needs "type" and a numeric "value", got {metric}')


class HubHandler(BaseHTTPRequestHandler):
    server_version = "TestHub/1.0"
    state: HubState  # set by `make_server`
    storage_url: str  # the storage host's origin, set by `make_server`

    def log_message(self, *args):  # keep test output quiet
        pass

    # Plumbing

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None, head_only=False):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def base_url(self) -> str:
        return f"http://{self.headers['Host']}"

    def user(self) -> str | None:
        """The account the request's token belongs to (None without a valid token)."""
        return USERS.get(self.headers.get("Authorization", "").removeprefix("Bearer "))

    def authorised(self) -> bool:
        return self.user() is not None

    def require_token(self) -> None:
        if not self.authorised():
            raise HubError(401, "Invalid credentials in Authorization header")

    def require_write(self, repo_id: str, repo_type: str = "model") -> None:
        """401 without a valid token; 403, as the Hub answers, for a namespace that is not the token's user's."""
        self.require_token()
        namespace = repo_id.split("/")[0]
        if namespace != self.user():
            raise HubError(403, f'You don\'t have the rights to write to the {repo_type} "{repo_id}": the namespace '
                                f'"{namespace}" is not yours ({self.user()})', "Forbidden")

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and repo_id.split("/")[0] != self.user()):
            raise HubError(404 if self.authorised() else 401, "Repository not found", "RepoNotFound")
        return repo

    def commit(self, repo: Repo, revision: str) -> Commit:
        revision = unquote(revision)
        if revision == "main":
            return repo.head
        for commit in repo.commits:
            if commit.oid == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        for pattern_method, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, url.path)
            if pattern_method == method and match:
                try:
                    with self.state.lock:
                        handler(self, parse_qs(url.query), *match.groups())
                except HubError as error:
                    headers = {"X-Error-Code": error.error_code} if error.error_code else {}
                    headers["X-Error-Message"] = " ".join(error.message.split())
                    self.send(error.status, {"error": error.message, **error.extra}, headers, head_only=method == "HEAD")
                return
        self.send(404, {"error": f"no route for {method} {url.path}"}, head_only=method == "HEAD")

    def do_GET(self):
        self.dispatch("GET")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    # API

    def whoami(self, query):
        self.require_token()
        self.send(200, {"type": "user", "name": self.user(), "fullname": "Test User", "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}})

    def create_repo(self, query):
        self.require_token()
        payload = json.loads(self.read_body())
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user()}/{payload['name']}"
        self.require_write(repo_id, repo_type)
        url = f"{self.base_url()}/{TYPE_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            raise HubError(409, "You already created this repo", extra={"url": url})
        repo = Repo(repo_type, repo_id, payload.get("visibility") == "private" or bool(payload.get("private")),
                    payload.get("sdk"))
        content = GITATTRIBUTES.encode()
        self.state.add_commit(repo, "initial commit",
                              {".gitattributes": StoredFile(len(content), git_blob_id(content), content)})
        self.state.repos[(repo_type, repo_id)] = repo
        self.send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, query):
        content = json.loads(self.read_body()).get("content") or ""
        front_matter = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(front_matter.group(1)) if front_matter else None
        except yaml.YAMLError as error:
            raise HubError(400, f"Invalid YAML in README metadata: {error}")
        if metadata is not None and not isinstance(metadata, dict):
            raise HubError(400, "README metadata must be a YAML mapping")
        check_model_index(metadata or {})
        self.send(200, {"errors": [], "warnings": []})

    def repo_info(self, query, type_plural, repo_id, revision="main"):
        repo = self.repo(type_plural[:-1], repo_id)
        commit = self.commit(repo, revision)
        info = {"id": repo_id, "_id": repo_id, "sha": commit.oid, "private": repo.private,
                "lastModified": commit.date, "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                "tags": [], "disabled": False, "gated": False, "downloads": 0, "likes": 0}
        if repo.repo_type == "model":
            info["modelId"] = repo_id
        if repo.repo_type == "space":
            info |= {"sdk": repo.sdk, "runtime": {"stage": "BUILDING", "hardware": {"current": None}}}
        self.send(200, info)

    def tree_entry(self, path: str, stored: StoredFile) -> dict:
        entry = {"type": "file", "oid": stored.blob_id, "size": stored.size, "path": path}
        if stored.lfs_oid:
            pointer = lfs_pointer(stored.lfs_oid, stored.size)
            entry["lfs"] = {"oid": stored.lfs_oid, "size": stored.size, "pointerSize": len(pointer)}
        return entry

    def list_tree(self, query, type_plural, repo_id, revision, path=""):
        commit = self.commit(self.repo(type_plural[:-1], repo_id), revision)
        prefix = unquote(path or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for file_path, stored in sorted(commit.files.items()):
            if prefix and not file_path.startswith(prefix + "/"):
                continue
            rest = file_path[len(prefix) + 1:] if prefix else file_path
            if "/" in rest and not recursive:
                folders.add((f"{prefix}/" if prefix else "") + rest.split("/")[0])
                continue
            entries.append(self.tree_entry(file_path, stored))
        if prefix and not entries and not folders:
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        entries += [{"type": "directory", "oid": git_blob_id(f.encode()), "size": 0, "path": f} for f in sorted(folders)]
        self.send(200, entries)

    def paths_info(self, query, type_plural, repo_id, revision):
        commit = self.commit(self.repo(type_plural[:-1], repo_id), revision)
        form = parse_qs(self.read_body().decode())
        wanted = form.get("paths", [])
        self.send(200, [self.tree_entry(p, commit.files[p]) for p in wanted if p in commit.files])

    def list_commits(self, query, type_plural, repo_id, revision):
        repo = self.repo(type_plural[:-1], repo_id)
        head = self.commit(repo, revision)
        history = repo.commits[:repo.commits.index(head) + 1][::-1]
        self.send(200, [{"id": c.oid, "title": c.summary, "message": "", "authors": [{"user": USER}], "date": c.date}
                        for c in history])

    def list_refs(self, query, type_plural, repo_id):
        repo = self.repo(type_plural[:-1], repo_id)
        self.send(200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}],
                        "tags": [], "converts": []})

    def preupload(self, query, type_plural, repo_id, revision):
        self.require_write(repo_id, type_plural[:-1])
        self.commit(self.repo(type_plural[:-1], repo_id), revision)
        files = json.loads(self.read_body())["files"]
        modes = []
        for entry in files:
            sample = base64.b64decode(entry.get("sample", ""))
            lfs = entry["size"] > LFS_SIZE_THRESHOLD or entry["path"].lower().endswith(LFS_SUFFIXES) or b"\0" in sample
            modes.append({"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self.send(200, {"files": modes, "commitOid": None})

    def lfs_batch(self, query, type_prefix, repo_id):
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[type_prefix or ""]
        self.require_write(repo_id, repo_type)
        self.repo(repo_type, repo_id)
        request = json.loads(self.read_body())
        objects = []
        for obj in request["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                answer["actions"] = {"upload": {"href": f"{self.base_url()}/__lfs/{obj['oid']}", "header": {}}}
            objects.append(answer)
        self.send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                  {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, query, oid):
        content = self.read_body()
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"sha256 mismatch for LFS object {oid}")
        self.state.lfs[oid] = content
        self.send(200)

    def create_commit(self, query, type_plural, repo_id, revision):
        self.require_write(repo_id, type_plural[:-1])
        repo = self.repo(type_plural[:-1], repo_id)
        parent = self.commit(repo, revision)
        files, summary = dict(parent.files), "Upload files"
        for line in self.read_body().decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary") or summary
            elif key == "file":
                content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                files[value["path"]] = StoredFile(len(content), git_blob_id(content), content)
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                size = len(self.state.lfs[value["oid"]])
                files[value["path"]] = StoredFile(size, git_blob_id(lfs_pointer(value["oid"], size)), lfs_oid=value["oid"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self.state.add_commit(repo, summary, files)
        url = f"{self.base_url()}/{TYPE_PREFIX[repo.repo_type]}{repo_id}"
        self.send(200, {"commitUrl": f"{url}/commit/{commit.oid}", "commitOid": commit.oid, "pullRequestUrl": None})

    def resolve(self, query, type_prefix, repo_id, revision, path):
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[type_prefix or ""]
        commit = self.commit(self.repo(repo_type, repo_id), revision)
        stored = commit.files.get(unquote(path))
        if stored is None:
            raise HubError(404, f"Entry not found: {unquote(path)}", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.blob_id}"', "Accept-Ranges": "bytes",
                   "Access-Control-Allow-Origin": "*",  # as huggingface.co: web pages fetch models (private mode)
                   "Access-Control-Expose-Headers": "X-Repo-Commit, X-Linked-Etag, X-Linked-Size, ETag, Location"}
        if stored.lfs_oid:  # as huggingface.co: a large file is a redirect to the storage host, metadata on the 302
            headers |= {"X-Linked-Etag": f'"{stored.lfs_oid}"', "X-Linked-Size": stored.size,
                        "Location": f"{self.storage_url}/lfs/{stored.lfs_oid}?expires=3600"}
            self.send(302, b"", headers, head_only=self.command == "HEAD")
            return
        self.send(200, stored.content, headers, head_only=self.command == "HEAD")

    def add_variable(self, query, repo_id):
        self.require_write(repo_id, "space")
        repo = self.repo("space", repo_id)
        payload = json.loads(self.read_body())
        repo.variables[payload["key"]] = {"value": payload["value"], "description": payload.get("description"),
                                          "updatedAt": hub_time()}
        self.send(200, repo.variables)

    def get_variables(self, query, repo_id):
        self.require_token()
        self.send(200, self.repo("space", repo_id).variables)


REPO_ID = r"([^/]+/[^/]+?)"
TYPES = r"(models|datasets|spaces)"
PREFIX = r"(datasets/|spaces/)?"
ROUTES = [
    ("GET", r"/api/whoami-v2", HubHandler.whoami),
    ("POST", r"/api/repos/create", HubHandler.create_repo),
    ("POST", r"/api/validate-yaml", HubHandler.validate_yaml),
    ("GET", rf"/api/{TYPES}/{REPO_ID}", HubHandler.repo_info),
    ("GET", rf"/api/{TYPES}/{REPO_ID}/revision/([^/]+)", HubHandler.repo_info),
    ("GET", rf"/api/{TYPES}/{REPO_ID}/tree/([^/]+)(?:/(.*))?", HubHandler.list_tree),
    ("POST", rf"/api/{TYPES}/{REPO_ID}/paths-info/([^/]+)", HubHandler.paths_info),
    ("GET", rf"/api/{TYPES}/{REPO_ID}/commits/([^/]+)", HubHandler.list_commits),
    ("GET", rf"/api/{TYPES}/{REPO_ID}/refs", HubHandler.list_refs),
    ("POST", rf"/api/{TYPES}/{REPO_ID}/preupload/([^/]+)", HubHandler.preupload),
    ("POST", rf"/api/{TYPES}/{REPO_ID}/commit/([^/]+)", HubHandler.create_commit),
    ("POST", rf"/api/spaces/{REPO_ID}/variables", HubHandler.add_variable),
    ("GET", rf"/api/spaces/{REPO_ID}/variables", HubHandler.get_variables),
    ("POST", rf"/{PREFIX}{REPO_ID}\.git/info/lfs/objects/batch", HubHandler.lfs_batch),
    ("PUT", r"/__lfs/([0-9a-f]{64})", HubHandler.lfs_upload),
    ("GET", rf"/{PREFIX}{REPO_ID}/resolve/([^/]+)/(.+)", HubHandler.resolve),
    ("HEAD", rf"/{PREFIX}{REPO_ID}/resolve/([^/]+)/(.+)", HubHandler.resolve),
]


class StorageHandler(BaseHTTPRequestHandler):
    """The storage host that `resolve/` redirects large files to: the bytes, with the CORS headers that
    huggingface.co's storage hosts send (any origin may read them), and no Hub API at all."""

    server_version = "TestHubStorage/1.0"
    state: HubState

    def log_message(self, *args):
        pass

    def do_GET(self):
        match = re.fullmatch(r"/lfs/([0-9a-f]{64})", urlparse(self.path).path)
        content = self.state.lfs.get(match.group(1)) if match else None
        self.send_response(200 if content is not None else 404)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Length, ETag")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content or b"")))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(content or b"")

    do_HEAD = do_GET


class HubServer(ThreadingHTTPServer):
    """The Hub's API on one port and its storage host on another; serve_forever and shutdown run both."""

    def __init__(self, address, handler, storage: ThreadingHTTPServer):
        super().__init__(address, handler)
        self.storage = storage

    def serve_forever(self, poll_interval=0.5):
        threading.Thread(target=self.storage.serve_forever, daemon=True).start()
        super().serve_forever(poll_interval)

    def shutdown(self):
        self.storage.shutdown()
        super().shutdown()


def make_server(port: int = 0, host: str = "127.0.0.1") -> HubServer:
    """A server with fresh, empty state and its storage host on a free port; call `serve_forever()` (e.g. in a
    thread) to run both."""
    state = HubState()
    storage = ThreadingHTTPServer((host, 0), type("BoundStorageHandler", (StorageHandler,), {"state": state}))
    storage_url = f"http://{host}:{storage.server_address[1]}"
    handler = type("BoundHubHandler", (HubHandler,), {"state": state, "storage_url": storage_url})
    server = HubServer((host, port), handler, storage)
    server.state = state
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the test Hub server on loopback.")
    parser.add_argument("--port", type=int, default=8765, help="Port to listen on.")
    arguments = parser.parse_args()
    print(f"Test Hub on http://127.0.0.1:{arguments.port} (token {TOKEN})")
    make_server(arguments.port).serve_forever()
