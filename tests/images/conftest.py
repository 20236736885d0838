"""Fixtures of the image suite: both images built with buildah (tests/images/build.sh, cached) and a
private containerd to run them in. The suite is marked ``images``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from containerd_runtime import Containerd, missing_tools
from image_build import BuildError, Built, build_images


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "images: builds the container images with buildah and runs them under containerd")


def images_skip_reason() -> str | None:
    """Why the images cannot be built and run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (buildah with chroot isolation, containerd)"
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None] + missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (apt-get install buildah debootstrap containerd runc)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = images_skip_reason()
    if reason is None:
        return
    for item in items:
        if "images" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Both images (built or found cached by tests/images/build.sh) and their OCI archives."""
    try:
        return build_images(tmp_path_factory.mktemp("image-archives"))
    except BuildError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def containerd(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd holding both images."""
    with Containerd(tmp_path_factory.mktemp("containerd")) as runtime:
        for archive in sorted(built.archives.glob("*.tar")):
            runtime.import_archive(archive)
        yield runtime
