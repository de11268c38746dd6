"""modelcar build: deterministic OCI layouts, runnable modelcars, ModelPack artifacts. No registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from oci import mediatypes as mt
from oci.build import BuildOptions, build
from oci.errors import BuildError
from oci.layout import Layout

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
MiB = 1 << 20


def make_model(root: Path) -> Path:
    """A small model: one 'large' weight file, a few small ones, a nested directory."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(os.urandom(3 * MiB))
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "tokenizer.json").write_text('{"vocab": {}}')
    (root / "README.md").write_text("# tiny\n")
    (root / "sub").mkdir()
    (root / "sub" / "extra.bin").write_bytes(os.urandom(1000))
    return root


@pytest.fixture
def model(tmp_path) -> Path:
    return make_model(tmp_path / "model")


def manifest_of(layout: Path, digest: str) -> dict:
    return Layout(layout).read_json(digest)


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


def test_layout_has_the_files_the_image_layout_spec_requires(model, tmp_path):
    result = build(model, tag="localhost/m:v1", output_layout=tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == result.digest
    assert index["manifests"][0]["annotations"][mt.ANN_REF_NAME] == "v1"
    assert sorted(p.name for p in out.iterdir()) == ["blobs", "index.json", "oci-layout"]
    for blob in (out / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_same_input_gives_the_same_manifest_digest(model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    os.utime(copy / "config.json", (1, 1))  # mtimes and paths must not matter
    os.chmod(copy / "README.md", 0o600)
    a = build(model, tag="localhost/m:v1", output_layout=tmp_path / "a")
    b = build(copy, tag="localhost/m:v1", output_layout=tmp_path / "b")
    assert a.digest == b.digest


def test_source_date_epoch_sets_the_created_time_and_entry_mtimes(model, tmp_path):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    r = build(model, BuildOptions(tag="localhost/m:v1", output_layout=tmp_path / "o", env=env))
    manifest = manifest_of(r.layout, r.digest)
    assert manifest["annotations"][mt.ANN_CREATED] == "2023-11-14T22:13:20Z"
    layer = Layout(r.layout).read_blob(manifest["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
    assert {m.mtime for m in members} == {1700000000}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    other = build(model, tag="localhost/m:v1", output_layout=tmp_path / "p")
    assert other.digest != r.digest


def test_large_files_get_a_layer_each_and_small_files_are_grouped(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", large_file_threshold=MiB)
    lay = Layout(r.layout)
    layers = manifest_of(r.layout, r.digest)["layers"]
    contents = [[n for n in tar_names(lay.read_blob(layer["digest"])) if "." in n.rsplit("/", 1)[-1]]
                for layer in layers]
    assert contents == [
        ["models/README.md", "models/config.json", "models/sub/extra.bin", "models/tokenizer.json"],
        ["models/model.safetensors"],
    ]


def test_every_layer_carries_title_and_filepath_annotations(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", busybox=BUSYBOX, large_file_threshold=MiB)
    for layer in manifest_of(r.layout, r.digest)["layers"]:
        assert layer["annotations"][mt.ANN_TITLE]
        assert layer["annotations"][mt.ANN_FILEPATH]
    big = manifest_of(r.layout, r.digest)["layers"][-1]
    assert big["annotations"][mt.ANN_FILEPATH] == "models/model.safetensors"


@pytest.mark.parametrize("compression,opener", [
    ("gzip", lambda b: gzip.decompress(b)),
    ("zstd", lambda b: zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b)).read()),
])
def test_compressed_layers_record_digest_and_uncompressed_diff_id(model, tmp_path, compression, opener):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", compression=compression)
    lay = Layout(r.layout)
    manifest = manifest_of(r.layout, r.digest)
    config = lay.read_json(manifest["config"]["digest"])
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == f"application/vnd.oci.image.layer.v1.tar+{compression}"
        raw = opener(lay.read_blob(layer["digest"]))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        assert layer["size"] == lay.blob_path(layer["digest"]).stat().st_size


def test_gzip_and_zstd_builds_are_deterministic_too(model, tmp_path):
    for compression in ("gzip", "zstd"):
        a = build(model, tag="localhost/m:v1", output_layout=tmp_path / f"a-{compression}", compression=compression)
        b = build(model, tag="localhost/m:v1", output_layout=tmp_path / f"b-{compression}", compression=compression)
        assert a.digest == b.digest


def test_config_lists_annotations_source_revision_and_platform(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", source="https://example.test/m",
              revision="abc123")
    manifest = manifest_of(r.layout, r.digest)
    assert manifest["annotations"][mt.ANN_SOURCE] == "https://example.test/m"
    assert manifest["annotations"][mt.ANN_REVISION] == "abc123"
    config = Layout(r.layout).read_json(manifest["config"]["digest"])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"]["type"] == "layers" and len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])


def _unpack(layout: Path, tag: str, dest: Path) -> Path:
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    subprocess.run(["umoci", "unpack", *rootless, "--image", f"{layout}:{tag}", str(dest)], check=True,
                   capture_output=True)
    return dest / "rootfs"


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_busybox_modelcar_unpacks_with_umoci_and_runs_the_kserve_command(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", busybox=BUSYBOX)
    rootfs = _unpack(r.layout, "v1", tmp_path / "bundle")
    assert (rootfs / "models" / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    # What KServe's sidecar needs: sh, ln and sleep, with /models in place.
    run = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c",
                          "test -s /models/model.safetensors && ln -sf /models /tmp-models && sleep 0 && echo ok"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_base_from_an_oci_layout_puts_its_layers_first(model, tmp_path):
    base = build(model, tag="localhost/base:1", output_layout=tmp_path / "base", busybox=BUSYBOX)
    small = tmp_path / "small"
    small.mkdir()
    (small / "w.bin").write_bytes(b"weights")
    r = build(small, tag="localhost/m:v1", output_layout=tmp_path / "o", base=f"oci:{tmp_path / 'base'}:1")
    lay = Layout(r.layout)
    manifest = manifest_of(r.layout, r.digest)
    base_manifest = manifest_of(base.layout, base.digest)
    assert [x["digest"] for x in manifest["layers"][:-1]] == [x["digest"] for x in base_manifest["layers"]]
    config = lay.read_json(manifest["config"]["digest"])
    base_config = Layout(base.layout).read_json(base_manifest["config"]["digest"])
    assert config["rootfs"]["diff_ids"][:-1] == base_config["rootfs"]["diff_ids"]
    for x in manifest["layers"]:
        assert lay.has_blob(x["digest"], x["size"])


def test_skopeo_reads_the_layout(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o")
    out = subprocess.run(["skopeo", "inspect", f"oci:{r.layout}:v1"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["Digest"] == r.digest


def test_modelpack_uses_the_model_spec_media_types_and_one_layer_per_file(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", format="modelpack")
    manifest = manifest_of(r.layout, r.digest)
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    kinds = {x["annotations"]["org.cncf.model.filepath"]: x["mediaType"] for x in manifest["layers"]}
    assert kinds == {
        "README.md": "application/vnd.cncf.model.doc.v1.tar",
        "config.json": "application/vnd.cncf.model.weight.config.v1.tar",
        "model.safetensors": "application/vnd.cncf.model.weight.v1.tar",
        "sub/extra.bin": "application/vnd.cncf.model.weight.v1.tar",
        "tokenizer.json": "application/vnd.cncf.model.weight.config.v1.tar",
    }
    lay = Layout(r.layout)
    names = tar_names(lay.read_blob(manifest["layers"][0]["digest"]))
    assert names == [manifest["layers"][0]["annotations"]["org.cncf.model.filepath"]]


def test_modelpack_compressed_weights_use_the_suffixed_media_type(model, tmp_path):
    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", format="modelpack", compression="zstd")
    types = {x["mediaType"] for x in manifest_of(r.layout, r.digest)["layers"]}
    assert "application/vnd.cncf.model.weight.v1.tar+zstd" in types


# The shape model-spec's config schema requires: descriptor, modelfs {type: layers, diffIds}, config.
MODELPACK_CONFIG_SCHEMA = {
    "type": "object",
    "required": ["descriptor", "config", "modelfs"],
    "additionalProperties": False,
    "properties": {
        "descriptor": {"type": "object", "additionalProperties": False, "properties": {
            "createdAt": {"type": "string", "format": "date-time"}, "name": {"type": "string", "minLength": 1},
            "sourceURL": {"type": "string"}, "revision": {"type": "string"}}},
        "modelfs": {"type": "object", "required": ["type", "diffIds"], "additionalProperties": False, "properties": {
            "type": {"enum": ["layers"]}, "diffIds": {"type": "array", "minItems": 1, "items": {"type": "string"}}}},
        "config": {"type": "object"},
    },
}


def test_modelpack_config_matches_the_model_spec_schema(model, tmp_path):
    import jsonschema

    r = build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", format="modelpack", revision="r1")
    manifest = manifest_of(r.layout, r.digest)
    config = Layout(r.layout).read_json(manifest["config"]["digest"])
    jsonschema.validate(config, MODELPACK_CONFIG_SCHEMA)
    assert len(config["modelfs"]["diffIds"]) == len(manifest["layers"])
    assert config["descriptor"]["revision"] == "r1"


def test_modelpack_refuses_base_and_busybox(model, tmp_path):
    with pytest.raises(BuildError, match="ModelPack"):
        build(model, tag="localhost/m:v1", output_layout=tmp_path / "o", format="modelpack", busybox=BUSYBOX)


def test_empty_model_directory_is_a_build_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no files"):
        build(tmp_path / "empty", tag="localhost/m:v1", output_layout=tmp_path / "o")


def test_cli_build_prints_one_line_error_and_exits_non_zero(tmp_path):
    run = subprocess.run([sys.executable, "-m", "oci.cli", "build", str(tmp_path / "missing"), "--tag",
                          "localhost/m:v1", "--output-layout", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("modelcar: error:")
    assert "not a directory" in run.stderr


def test_cli_build_writes_the_layout(model, tmp_path):
    run = subprocess.run([sys.executable, "-m", "oci.cli", "build", str(model), "--tag", "localhost/m:v1",
                          "--output-layout", str(tmp_path / "o"), "--compression", "gzip"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    digest = Layout(tmp_path / "o").resolve("v1")["digest"]
    assert digest in run.stdout
