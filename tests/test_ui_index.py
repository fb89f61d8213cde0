"""The browse page with acmebox's catalog index (/ui-index/) in headless Chromium, at 10,000
repositories made on the registry's storage in 20 namespaces and indexed by a rebuild: the
defects the index fixes (issue 23: 3 grouping by namespace, 4 search deep in the catalog, 5 row
summaries that wait for the registry), and screenshots at that size, light and dark, desktop and
phone. Assertions count requests (Playwright's request events, the browser's resource timing),
never time; bench/catalog.py times the index.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import ARTIFACTS, Page, chromium, expect
from tests.helpers.registry_fill import clone_repositories, push_built_image
from tests.helpers.stack import NOTIFY_SECRET, USERS, Stack, running_stack

pytestmark = pytest.mark.e2e
BULK = 10_000
NAMESPACES = 20
TOTAL = BULK + 2  # the clones, seed/app, team/newest


def rebuild(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.acmebox_port, timeout=10)
    try:
        conn.request("POST", "/registry-events/rebuild", headers={"Authorization": f"Bearer {NOTIFY_SECRET}"})
        assert conn.getresponse().status == 202
    finally:
        conn.close()


def indexed(stack: Stack) -> int:
    r = stack.https("GET", "/ui-index/repositories?n=1")
    return int(r.json()["total"]) if r.status == 200 else -1


def wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def index_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("ui-index-stack")) as stack:
        wait_for(lambda: indexed(stack) == 0, "the first (empty) build", 60)
        writer = stack.token("repository:seed/app:pull,push", basic=("alice", USERS["alice"]))
        for tag in ("1.0", "1.1", "latest"):
            push_built_image(stack, "seed/app", tag, writer, "2026-11-01T08:00:00Z", layer=b"seed" * 3000)
        clone_repositories(stack, "seed/app", [f"ns{i % NAMESPACES:02d}/app-{i:05d}" for i in range(BULK)],
                           ["1.0", "1.1", "latest"])
        built = stack.https("GET", "/ui-index/repositories?n=1").json()["built"]
        rebuild(stack)
        wait_for(lambda: stack.https("GET", "/ui-index/repositories?n=1").json()["built"] != built, "the rebuild", 900)
        assert indexed(stack) == TOTAL - 1
        writer = stack.token("repository:team/newest:pull,push", basic=("alice", USERS["alice"]))
        push_built_image(stack, "team/newest", "2.0", writer, "2026-11-02T08:00:00Z", layer=b"new" * 100)
        wait_for(lambda: indexed(stack) == TOTAL, "the push event", 120)
        yield stack


@pytest.fixture(scope="module")
def browser(index_stack: Stack) -> Iterator[Any]:
    with chromium(index_stack) as b:
        yield b


@pytest.fixture
def desktop(browser: Any, index_stack: Stack) -> Iterator[Page]:
    page = Page(browser, index_stack)
    yield page
    page.close()
    assert page.errors == []


def test_rows_come_with_their_summaries_from_one_request(desktop: Page) -> None:
    page = desktop.open()
    first = page.locator(".repo").first
    expect(first).to_contain_text("ns00/app-00000")
    expect(first.locator(".summary")).to_contain_text("3 tags: latest, 1.1, 1.0 · 11.")
    before = page.evaluate("""(() => {
        const mark = performance.getEntriesByName('acmebox:repositories-visible')[0];
        return mark ? performance.getEntriesByType('resource')
            .filter((e) => e.startTime <= mark.startTime).map((e) => e.name) : null;
    })()""")
    assert before is not None and [u for u in before if "/ui-index/" in u or "/v2/" in u] == \
        [f"https://{desktop.stack.host}/ui-index/repositories?q=&sort=name&n=100&offset=0"], before
    page.wait_for_load_state("networkidle")
    # Defect 5: every row's summary is there with the rows; the registry is not asked per row.
    assert page.locator(".repo").count() == 100
    assert page.locator(".summary", has_text="…").count() == 0
    assert desktop.paths(r"/v2/") == []
    # The storage's use joins the status line, read once after the rows (not before the first paint).
    expect(page.locator("#status")).to_have_text(
        re.compile(rf"^{TOTAL:,} repositories · \S+ \S*B stored \(\d+% of its disk in use\)$"))
    assert len(desktop.paths(r"/ui-index/storage")) == 1
    # Scrolling reads the next page of the index, not the registry's catalog.
    page.locator("#more").scroll_into_view_if_needed()
    expect(page.locator(".repo")).to_have_count(200)
    assert len(desktop.paths(r"/ui-index/repositories")) == 2 and desktop.paths(r"/v2/_catalog") == []


def test_a_search_deep_in_the_catalog_is_one_request(desktop: Page) -> None:
    page = desktop.open()
    expect(page.locator(".repo").first).to_contain_text("ns00/app-00000")
    page.wait_for_load_state("networkidle")
    asked = len(desktop.requests)
    # Defect 4: the last repositories of the catalog, found by asking the index once.
    page.get_by_label("Search").fill("app-09987")
    expect(page.locator(".repo .repo-name")).to_have_text(["ns07/app-09987"])
    expect(page.locator("#status")).to_have_text("1 repository matches “app-09987”")
    page.wait_for_load_state("networkidle")
    assert [u for u in desktop.requests[asked:] if not u.endswith("/favicon.svg")] == [
        f"https://{desktop.stack.host}/ui-index/repositories?q=app-09987&sort=name&n=100&offset=0"]
    assert page.url.endswith("#/?q=app-09987")
    # The row opens with the registry's own tags (the index is only the list).
    page.get_by_role("button", name="Show tags of ns07/app-09987").click()
    expect(page.locator(".repo .tag-name").first).to_be_visible()
    assert len(desktop.paths(r"/v2/ns07/app-09987/tags/list")) == 1


def test_namespaces_group_and_last_push_sorts(desktop: Page) -> None:
    page = desktop.open()
    expect(page.locator(".repo").first).to_contain_text("ns00/app-00000")
    # Defect 3: 10,000 names become 22 namespace lines; one opens a page of its repositories.
    page.get_by_label("Group by namespace").check()
    expect(page.locator(".ns")).to_have_count(NAMESPACES + 2)
    expect(page.locator("#status")).to_have_text(
        re.compile(rf"^{TOTAL:,} repositories in {NAMESPACES + 2} namespaces · .* stored \(\d+% of its disk in use\)$"))
    group = page.locator(".ns", has=page.get_by_role("button", name="ns07", exact=True))
    expect(group.locator(".summary").first).to_have_text(f"{BULK // NAMESPACES} repositories")
    group.get_by_role("button", name="ns07", exact=True).click()
    expect(group.locator(".repo")).to_have_count(100)
    group.get_by_role("button", name="Show 100 more of 400 repositories left").click()
    expect(group.locator(".repo")).to_have_count(200)
    assert len(desktop.paths(r"/ui-index/namespaces")) == 1 and desktop.paths(r"/v2/_catalog") == []
    page.get_by_label("Group by namespace").uncheck()
    page.get_by_label("Repositories by").select_option("push")
    expect(page.locator(".repo .repo-name").first).to_have_text("team/newest")
    expect(page.locator(".repo").first.locator(".summary")).to_contain_text("pushed")
    assert desktop.paths(r"/v2/_catalog") == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_at_10000_repositories(browser: Any, index_stack: Stack, scheme: str) -> None:
    wide = Page(browser, index_stack, width=1366, height=900, color_scheme=scheme)
    try:
        page = wide.open()
        expect(page.locator(".repo").first.locator(".summary")).to_contain_text("3 tags")
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-10000-desktop-{scheme}.png"))
        page.get_by_label("Group by namespace").check()
        page.get_by_role("button", name="ns03", exact=True).click()
        expect(page.locator(".ns .repo")).to_have_count(100)
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-10000-desktop-namespaces-{scheme}.png"))
        page.get_by_label("Group by namespace").uncheck()
        page.get_by_label("Search").fill("app-0998")
        expect(page.locator(".repo")).to_have_count(10)
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-10000-desktop-search-{scheme}.png"))
    finally:
        wide.close()
    assert wide.errors == []
    phone = Page(browser, index_stack, width=390, height=844, is_mobile=True, has_touch=True,
                 device_scale_factor=2, color_scheme=scheme)
    try:
        page = phone.open()
        expect(page.locator(".repo").first.locator(".summary")).to_contain_text("3 tags")
        # nothing wider than the phone
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-10000-phone-{scheme}.png"))
        page.get_by_label("Group by namespace").check()
        expect(page.locator(".ns")).to_have_count(NAMESPACES + 2)
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-10000-phone-namespaces-{scheme}.png"))
    finally:
        phone.close()
    assert phone.errors == []
