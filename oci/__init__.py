"""modelcar: Docker-free OCI model images.

Build deterministic OCI images (KServe modelcars) or CNCF ModelPack artifacts from a model
directory, push them to any OCI distribution registry and pull them back, with no Docker daemon.
The CLI (``oci.cli``) is a thin layer over these functions:

    from oci import build, push, inspect
    result = build("model/", tag="registry.example/models/bert:v1", output_layout="out/")
    push(result.layout, "registry.example/models/bert:v1")
"""

from __future__ import annotations

from oci.build import BuildOptions, BuildResult, build
from oci.errors import BuildError, LayoutError, RegistryError
from oci.push import inspect, push

__all__ = ["BuildOptions", "BuildResult", "BuildError", "LayoutError", "RegistryError", "build", "inspect", "push"]
