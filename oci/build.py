"""Build a modelcar image or a ModelPack artifact from a model directory, into an OCI layout.

Contract: on success the layout at ``output_layout`` holds every blob of the image and
``index.json`` names its manifest with the tag; the same input (files, options,
``SOURCE_DATE_EPOCH``) gives the same manifest digest on any machine. On failure the layout may
hold extra complete blobs (harmless, content addressed) but index.json is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from oci import mediatypes as mt
from oci.busybox import busybox_entries
from oci.errors import BuildError
from oci.layout import Layout, descriptor
from oci.tarlayer import Entry, LayerBlob, dirs_for, write_layer

MODELS_DIR = "models"
DEFAULT_LARGE_FILE = 32 << 20
_SKIP = {".modeldepot"}  # our download manifest: a property of one copy, not of the model
_DOC_NAMES = ("readme", "license", "licence", "notice", "copying", "model_card", "modelcard")
_DOC_SUFFIXES = (".md", ".rst", ".pdf")
_WEIGHT_CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".jinja", ".model", ".vocab", ".tiktoken", ".py")


@dataclass
class BuildOptions:
    tag: str | None = None
    output_layout: str | os.PathLike | None = None
    base: str | None = None
    busybox: str | os.PathLike | None = None
    format: str = "modelcar"
    compression: str = "none"
    large_file_threshold: int = DEFAULT_LARGE_FILE
    source: str | None = None
    revision: str | None = None
    platform: str = "linux/amd64"
    insecure: bool = False
    jobs: int = 4
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class BuildResult:
    layout: Path
    tag: str
    manifest: dict  # the descriptor index.json holds
    layers: int

    @property
    def digest(self) -> str:
        return self.manifest["digest"]


@dataclass(frozen=True)
class _File:
    rel: str
    path: Path
    size: int
    mode: int


@dataclass(frozen=True)
class _LayerPlan:
    entries: list[Entry]
    media_type: str
    annotations: dict


def build(model_dir: str | os.PathLike, options: BuildOptions | None = None, **kwargs) -> BuildResult:
    """Package ``model_dir`` per ``options`` (or keyword arguments of BuildOptions)."""
    opts = options or BuildOptions(**kwargs)
    _check(opts)
    files = scan(Path(model_dir))
    tag = _layout_tag(opts.tag)
    out = Path(opts.output_layout) if opts.output_layout else Path.cwd() / f"{_name_hint(opts.tag, model_dir)}.oci"
    layout = Layout(out).create()
    mtime = source_date_epoch(opts.env)
    created = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    if opts.format == "modelpack":
        plans = _plan_modelpack(files, opts.compression)
    else:
        plans = _plan_modelcar(files, opts.compression, opts.large_file_threshold)
    base_layers: list[dict] = []
    base_config: dict = {}
    platform = opts.platform
    if opts.base:
        from oci.base import load_base

        base_layers, base_config = load_base(opts.base, layout, platform, opts)
    if opts.busybox:
        entries, arch = busybox_entries(opts.busybox)
        platform = f"linux/{arch}"
        plans.insert(0, _LayerPlan(entries, mt.with_compression(mt.LAYER, opts.compression),
                                   {mt.ANN_TITLE: "busybox", mt.ANN_FILEPATH: "bin/busybox"}))

    blobs = _write_layers(layout, plans, mtime, opts.jobs)
    layers = base_layers + [
        descriptor(p.media_type, b.digest, b.size, p.annotations) for p, b in zip(plans, blobs, strict=True)
    ]
    annotations = {mt.ANN_CREATED: created}
    if opts.source:
        annotations[mt.ANN_SOURCE] = opts.source
    if opts.revision:
        annotations[mt.ANN_REVISION] = opts.revision

    diff_ids = [b.diff_id for b in blobs]
    if opts.format == "modelpack":
        config_desc = layout.put_json(mt.MODEL_CONFIG, _modelpack_config(opts, model_dir, created, diff_ids))
        manifest = {"schemaVersion": 2, "mediaType": mt.MANIFEST, "artifactType": mt.MODEL_ARTIFACT,
                    "config": config_desc, "layers": layers, "annotations": annotations}
    else:
        config = _image_config(base_config, platform, created, diff_ids, len(plans))
        config_desc = layout.put_json(mt.CONFIG, config)
        manifest = {"schemaVersion": 2, "mediaType": mt.MANIFEST, "config": config_desc, "layers": layers,
                    "annotations": annotations}
    manifest_desc = layout.put_json(mt.MANIFEST, manifest)
    if opts.format == "modelpack":
        manifest_desc["artifactType"] = mt.MODEL_ARTIFACT
    layout.tag(manifest_desc, tag)
    layout.tidy()
    return BuildResult(layout=out, tag=tag, manifest=manifest_desc, layers=len(layers))


def source_date_epoch(env: Mapping[str, str]) -> int:
    """The fixed timestamp of every entry: ``SOURCE_DATE_EPOCH`` when set, else the Unix epoch."""
    raw = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer; set seconds since 1970") from None
    if value < 0:
        raise BuildError(f"SOURCE_DATE_EPOCH={raw!r} is negative; set seconds since 1970")
    return value


def scan(model_dir: Path) -> list[_File]:
    """Every regular file under ``model_dir`` (symlinks followed), sorted by relative path."""
    if not model_dir.is_dir():
        raise BuildError(f"{model_dir}: not a directory; pass the directory that holds the model files")
    found: list[_File] = []
    for root, dirs, names in os.walk(model_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not (Path(root) == model_dir and d in _SKIP))
        # A symlink to a directory is listed in dirs by os.walk; follow it like a file symlink would be.
        for d in list(dirs):
            if (Path(root) / d).is_symlink():
                raise BuildError(f"{Path(root) / d}: a symlink to a directory; copy or resolve it first")
        for name in names:
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError as exc:
                raise BuildError(f"{path}: cannot read it ({exc.strerror}); is it a dangling symlink?") from exc
            if not path.is_file():
                raise BuildError(f"{path}: not a regular file; a model may hold only files and directories")
            rel = path.relative_to(model_dir).as_posix()
            found.append(_File(rel, path, st.st_size, 0o755 if st.st_mode & 0o100 else 0o644))
    if not found:
        raise BuildError(f"{model_dir}: holds no files; nothing to package")
    found.sort(key=lambda f: f.rel)
    return found


def _check(opts: BuildOptions) -> None:
    if opts.format not in ("modelcar", "modelpack"):
        raise BuildError(f"--format {opts.format!r}: use modelcar or modelpack")
    if opts.compression not in mt.COMPRESSIONS:
        raise BuildError(f"--compression {opts.compression!r}: use none, gzip or zstd")
    if opts.format == "modelpack" and (opts.base or opts.busybox):
        raise BuildError("--base and --busybox make a runnable modelcar; a ModelPack artifact takes neither")
    if opts.large_file_threshold < 1:
        raise BuildError("the large-file threshold must be a positive number of bytes")


def _layout_tag(ref: str | None) -> str:
    if not ref:
        return "latest"
    from oci.reference import parse

    return parse(ref).tag or "latest"


def _name_hint(ref: str | None, model_dir) -> str:
    if ref:
        from oci.reference import parse

        return parse(ref).repository.rsplit("/", 1)[-1]
    return Path(model_dir).resolve().name or "model"


def _file_entry(f: _File, prefix: str) -> Entry:
    return Entry(prefix + f.rel, "file", f.mode, source=f.path, size=f.size)


def _plan_modelcar(files: list[_File], compression: str, threshold: int) -> list[_LayerPlan]:
    """Small files grouped (up to ``threshold`` bytes a layer), then one layer per large file.

    Grouping keeps the layer count low; a layer per large file means changing one weight file
    re-uploads only that file.
    """
    media = mt.with_compression(mt.LAYER, compression)
    prefix = MODELS_DIR + "/"
    small = [f for f in files if f.size < threshold]
    large = [f for f in files if f.size >= threshold]
    groups: list[list[_File]] = []
    for f in small:
        if not groups or sum(g.size for g in groups[-1]) + f.size > threshold:
            groups.append([])
        groups[-1].append(f)
    plans = []
    for i, group in enumerate(groups):
        entries = [_file_entry(f, prefix) for f in group]
        plans.append(_LayerPlan(dirs_for(e.arcname for e in entries) + entries, media,
                                {mt.ANN_TITLE: f"small-files-{i}", mt.ANN_FILEPATH: prefix}))
    for f in large:
        entry = _file_entry(f, prefix)
        plans.append(_LayerPlan(dirs_for([entry.arcname]) + [entry], media,
                                {mt.ANN_TITLE: f.rel, mt.ANN_FILEPATH: prefix + f.rel}))
    return plans


def modelpack_kind(rel: str) -> str:
    """The ModelPack layer type for a file: documentation, weight configuration, or weights."""
    name = rel.rsplit("/", 1)[-1].lower()
    if name.startswith(_DOC_NAMES) or name.endswith(_DOC_SUFFIXES):
        return mt.MODEL_DOC
    if name.endswith(_WEIGHT_CONFIG_SUFFIXES) or name.startswith("tokenizer"):
        return mt.MODEL_WEIGHT_CONFIG
    return mt.MODEL_WEIGHT


def _plan_modelpack(files: list[_File], compression: str) -> list[_LayerPlan]:
    """One layer per file, its path relative to the model root (what image volumes mount)."""
    plans = []
    for f in files:
        entry = _file_entry(f, "")
        plans.append(_LayerPlan(dirs_for([f.rel]) + [entry], mt.with_compression(modelpack_kind(f.rel), compression),
                                {mt.ANN_TITLE: f.rel, mt.ANN_FILEPATH: f.rel}))
    return plans


def _write_layers(layout: Layout, plans: list[_LayerPlan], mtime: int, jobs: int) -> list[LayerBlob]:
    def one(plan: _LayerPlan) -> LayerBlob:
        blob, tmp = write_layer(plan.entries, layout.tmp_dir, _compression_of(plan.media_type), mtime)
        layout.commit(tmp, blob.digest)
        return blob

    # Threads suffice: hashing, compression and file I/O release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(plans)))) as pool:
        return list(pool.map(one, plans))


def _compression_of(media_type: str) -> str:
    return {"tar+gzip": "gzip", "tar+zstd": "zstd"}.get(mt.unpack_kind(media_type) or "", "none")


def _image_config(base: dict, platform: str, created: str, diff_ids: list[str], own_layers: int) -> dict:
    os_name, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    cfg = dict(base)
    cfg.setdefault("architecture", arch or "amd64")
    cfg.setdefault("os", os_name or "linux")
    if variant and "variant" not in base:
        cfg["variant"] = variant
    if not base:
        cfg["architecture"], cfg["os"] = arch or "amd64", os_name or "linux"
    cfg["created"] = created
    run = dict(cfg.get("config") or {})
    run.setdefault("Env", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    cfg["config"] = run
    rootfs = dict(cfg.get("rootfs") or {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = list(rootfs.get("diff_ids", [])) + diff_ids
    cfg["rootfs"] = rootfs
    history = list(cfg.get("history") or [])
    history += [{"created": created, "created_by": "modelcar build"} for _ in range(own_layers)]
    cfg["history"] = history
    return cfg


def _modelpack_config(opts: BuildOptions, model_dir, created: str, diff_ids: list[str]) -> dict:
    desc: dict = {"createdAt": created, "name": _name_hint(opts.tag, model_dir)}
    if opts.source:
        desc["sourceURL"] = opts.source
    if opts.revision:
        desc["revision"] = opts.revision
    return {"descriptor": desc, "modelfs": {"type": "layers", "diffIds": diff_ids}, "config": {}}
