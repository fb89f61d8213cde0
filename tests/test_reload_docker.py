"""The `docker` reloader against a real Docker engine: SIGHUP reaches the containers picked by
label or by name (a busybox container that traps SIGHUP proves it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from acmebox.reload import ReloadFailed, ReloadTarget
from tests.helpers.docker import busybox_image, docker
from tests.helpers.process import wait_sync

pytestmark = pytest.mark.e2e  # a dockerd of the tests' own

IMAGE = "acmebox-test/hup:1"
TRAP = 'trap "echo got-SIGHUP" HUP; echo ready; while true; do sleep 0.1; done'


def logs(host: str, container: str) -> str:
    return docker(host, "logs", container, check=True).stdout


@pytest.fixture(scope="module")
def hup_image(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return busybox_image(docker_engine, tmp_path_factory.mktemp("rootfs"), IMAGE)


@pytest.fixture
def containers(docker_engine: str, hup_image: str) -> Iterator[list[str]]:
    names = ["nginx-a", "nginx-b", "bystander"]
    for name in names:
        label = "acmebox.reload=nginx" if name != "bystander" else "other=1"
        docker(docker_engine, "run", "-d", "--name", name, "--label", label, "--network", "none",
               hup_image, "/bin/sh", "-c", TRAP, check=True)
    for name in names:
        wait_sync(lambda n=name: "ready" in logs(docker_engine, n), what=f"{name} to start")  # type: ignore[misc]
    yield names
    docker(docker_engine, "rm", "-f", *names, check=True)


async def test_docker_reloader_by_label_and_by_name(
    docker_engine: str, containers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_engine)

    def hups(name: str) -> int:
        return logs(docker_engine, name).count("got-SIGHUP")

    what = await ReloadTarget.parse("docker", "label=acmebox.reload=nginx").run()
    assert "nginx-a" in what and "nginx-b" in what
    wait_sync(lambda: hups("nginx-a") == 1 and hups("nginx-b") == 1, what="SIGHUP in the labelled containers")
    assert hups("bystander") == 0

    await ReloadTarget.parse("docker", "bystander").run()
    wait_sync(lambda: hups("bystander") == 1, what="SIGHUP in the named container")
    assert hups("nginx-a") == 1

    with pytest.raises(ReloadFailed, match="no running container matches label=nothing=here"):
        await ReloadTarget.parse("docker", "label=nothing=here").run()
    with pytest.raises(ReloadFailed, match="docker:"):
        await ReloadTarget.parse("docker", "no-such-container").run()
