"""Deleting from the browse page (nginx/ui/manage.js) in headless Chromium against the real stack
with an ACL (alice may write team/**, bob only bob/**): three tags pushed; bob logs in and is
refused (the token service grants him no `delete`, and the page sends no DELETE); a wrong password
is refused; alice deletes one tag and one digest, each after a confirmation that names what goes,
and the registry and the catalog index no longer have them. The password stays in the page's
memory: nothing in storage, cookies or the URL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import Page, chromium, expect
from tests.helpers.stack import USERS, Stack, push_image, running_stack

pytestmark = pytest.mark.e2e
ACL = 'alice = ["team/**"]\nbob = ["bob/**"]\n'
MANIFEST = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture(scope="module")
def delete_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("delete-stack"), acl=ACL) as stack:
        yield stack


@pytest.fixture(scope="module")
def digests(delete_stack: Stack) -> dict[str, str]:
    writer = delete_stack.token("repository:team/app:pull,push", basic=("alice", USERS["alice"]))
    return {tag: push_image(delete_stack, "team/app", tag, writer, layer=f"layer of {tag}".encode() * 100)
            for tag in ("1.0", "1.1", "2.0")}


@pytest.fixture(scope="module")
def browser(delete_stack: Stack) -> Iterator[Any]:
    with chromium(delete_stack) as b:
        yield b


@pytest.fixture
def desktop(browser: Any, delete_stack: Stack) -> Iterator[Page]:
    page = Page(browser, delete_stack)
    yield page
    page.close()
    assert page.errors == []


def manifest_status(stack: Stack, ref: str) -> int:
    pull = stack.token("repository:team/app:pull")
    return stack.https("HEAD", f"/v2/team/app/manifests/{ref}", token=pull, headers=MANIFEST).status


def log_in(page: Any, user: str, password: str) -> None:
    page.get_by_role("button", name="Log in to delete").click()
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()


def test_a_user_the_acl_does_not_allow_is_refused(desktop: Page, digests: dict[str, str]) -> None:
    deletes: list[str] = []
    desktop.page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    page = desktop.open("#/repo/team/app")
    expect(page.locator(".tag")).to_have_count(3)
    expect(page.locator(".tag:not(.pending)")).to_have_count(3)
    assert page.get_by_role("button", name="Delete tag team/app:1.1").count() == 0, "no delete before a login"
    log_in(page, "bob", "wrong password")
    expect(page.locator("#login-dialog .error")).to_contain_text("the user name or password is wrong")
    page.get_by_role("button", name="Cancel").click()
    log_in(page, "bob", USERS["bob"])
    expect(page.get_by_role("button", name="Log out bob")).to_be_visible()
    page.get_by_role("button", name="Delete tag team/app:1.1").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text(f"This deletes the manifest {digests['1.1']} and every tag that points at it: "
                                   "team/app:1.1.")
    dialog.get_by_role("button", name="Delete team/app:1.1").click()
    card = page.locator(".tag", has=page.locator(".tag-name", has_text="1.1"))
    expect(card.locator(".manage-result")).to_have_text(
        "Not deleted: bob may not delete in team/app (the token service did not grant it).")
    assert deletes == []
    assert manifest_status(desktop.stack, digests["1.1"]) == 200
    stored = page.evaluate("JSON.stringify([localStorage, sessionStorage, document.cookie, location.href])")
    assert USERS["bob"] not in stored and "bob" not in page.url


def test_an_allowed_user_deletes_a_tag_and_a_digest(desktop: Page, digests: dict[str, str]) -> None:
    deletes: list[str] = []
    desktop.page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    page = desktop.open("#/repo/team/app")
    expect(page.locator(".tag:not(.pending)")).to_have_count(3)
    log_in(page, "alice", USERS["alice"])
    # by tag: the confirmation names the tag and the digest it takes with it
    page.get_by_role("button", name="Delete tag team/app:1.1").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("Delete the tag team/app:1.1?")
    expect(dialog).to_contain_text(f"{digests['1.1']} and every tag that points at it: team/app:1.1.")
    dialog.get_by_role("button", name="Delete team/app:1.1").click()
    expect(page.locator(".manage-result")).to_have_text(f"Deleted team/app:1.1 ({digests['1.1']}).")
    expect(page.locator(".tag")).to_have_count(2)  # the list is read again
    # by digest
    page.get_by_role("button", name=f"Delete digest {digests['2.0']} of team/app").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text(f"Delete the manifest {digests['2.0']} from team/app?")
    expect(dialog).to_contain_text("every tag that points at it: team/app:2.0.")
    dialog.get_by_role("button", name=f"Delete {digests['2.0']}").click()
    expect(page.locator(".tag")).to_have_count(1)
    assert deletes == [f"https://{desktop.stack.host}/v2/team/app/manifests/{digests[t]}" for t in ("1.1", "2.0")]
    assert manifest_status(desktop.stack, digests["1.1"]) == 404
    assert manifest_status(desktop.stack, digests["2.0"]) == 404
    assert manifest_status(desktop.stack, "1.0") == 200
    # the registry's delete events reach the catalog index
    deadline = time.monotonic() + 60
    while desktop.stack.https("GET", "/ui-index/repositories?q=team/app").json()["repositories"][0]["tags"] != 1:
        assert time.monotonic() < deadline, "the index did not follow the deletes"
        time.sleep(0.2)
