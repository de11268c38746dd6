"""Image references and registry credentials: what users type and what their config files hold."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.procs import free_port

from oci.auth import Credentials, lookup, parse_challenge
from oci.errors import RegistryError
from oci.reference import parse
from storage.errors import BadURIError


@pytest.mark.parametrize("text,registry,repo,tag,digest", [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("org/model:v1", "docker.io", "org/model", "v1", None),
    ("127.0.0.1:5000/models/bert:v2", "127.0.0.1:5000", "models/bert", "v2", None),
    ("localhost/m", "localhost", "m", "latest", None),
    ("oci://ghcr.io/o/m@sha256:" + "a" * 64, "ghcr.io", "o/m", None, "sha256:" + "a" * 64),
    ("quay.io/o/m:t@sha256:" + "b" * 64, "quay.io", "o/m", "t", "sha256:" + "b" * 64),
])
def test_references_parse_like_docker(text, registry, repo, tag, digest):
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)


def test_docker_hub_uses_its_api_host():
    assert parse("busybox").api_host == "registry-1.docker.io"


@pytest.mark.parametrize("bad", ["Upper/Case:v1", "host:5000/repo@sha256:short", "repo:bad tag", ""])
def test_malformed_references_are_bad_uri_errors(bad):
    with pytest.raises(BadURIError):
        parse(bad)


def _config(path, host, user="u", password="p"):
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_registry_auth_file_wins_over_the_docker_config(tmp_path):
    (tmp_path / ".docker").mkdir()
    _config(tmp_path / ".docker" / "config.json", "r.test", password="from-home")
    special = _config(tmp_path / "auth.json", "r.test", password="from-auth-file")
    assert lookup("r.test", {"HOME": str(tmp_path)}).password == "from-home"
    assert lookup("r.test", {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(special)}).password == "from-auth-file"


def test_kserve_docker_config_may_name_a_mounted_secret_directory(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    _config(secret / ".dockerconfigjson", "https://r.test/v1/", user="k", password="s")
    creds = lookup("r.test", {"HOME": str(tmp_path), "KSERVE_OCI_DOCKER_CONFIG": str(secret)})
    assert (creds.username, creds.password) == ("k", "s")


def test_docker_hub_credentials_are_found_under_the_index_key(tmp_path):
    _config(tmp_path / "c.json", "https://index.docker.io/v1/", user="hub")
    assert lookup("registry-1.docker.io", {"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "c.json")})


def test_no_credentials_anywhere_is_anonymous(tmp_path):
    assert lookup("r.test", {"HOME": str(tmp_path)}) is None


def test_credentials_never_show_their_password():
    creds = Credentials("user", "hunter2-secret")
    assert "hunter2" not in repr(creds) and "hunter2" not in str(creds)


def test_bearer_challenge_parameters_are_parsed():
    scheme, params = parse_challenge('Bearer realm="https://auth.test/token",service="reg",scope="repository:a/b:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.test/token", "service": "reg", "scope": "repository:a/b:pull"}


def test_pushing_to_something_that_is_not_a_registry_says_so(tmp_path):
    from oci.build import build
    from oci.push import push

    class NotARegistry(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), NotARegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "w").write_text("x")
        host = f"127.0.0.1:{server.server_address[1]}"
        b = build(tmp_path / "m", tag=f"{host}/a:v1", output_layout=tmp_path / "o")
        with pytest.raises(RegistryError, match="not an OCI registry"):
            push(b.layout, f"{host}/a:v1", insecure=True, env={"HOME": str(tmp_path)})
    finally:
        server.shutdown()
        server.server_close()
