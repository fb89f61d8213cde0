"""The browse page in headless Chromium (Debian's, driven by Playwright) against a registry of
real size: 1,500 repositories made on the registry's storage (two catalog pages), real pushed
images, a multi-platform index, an empty repository. It shows the first repositories before
reading any of them, finds one past the first catalog page by search, lists an index's
platforms, sorts tags by version, opens a repository from a link, and fits a phone.

Request counts come from the browser's own resource timing and from Playwright's request
events; no assertion is about time. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import ARTIFACTS, Page, chromium, expect
from tests.helpers.registry_fill import clone_repositories, empty_repository, push_built_image, push_index
from tests.helpers.stack import USERS, Stack, running_stack

pytestmark = pytest.mark.e2e
BULK = 1500
# What the page may fetch before the first repositories are on screen: its files, its question to
# the catalog index (404 here: this deployment has none), the token for the catalog, the first
# catalog page (and the icon, which Chromium asks for on its own time).
FIRST_PAINT_ALLOWED = re.compile(
    r"/(style\.css|app\.js|manage\.js|favicon\.svg|ui-index/repositories\?[^ ]*|auth/token\?[^ ]*catalog[^ ]*"
    r"|v2/_catalog\?n=1000)$"
)
# The status line's note once bulk/r0003x (listed, no tags) has been read and hidden.
HIDDEN = " · 1 repository without tags hidden"
MULTIARCH = [("linux", "amd64", None, 300_000, "2026-11-20T10:00:00Z"),
             ("linux", "arm64", "v8", 280_000, "2026-11-20T10:05:00Z")]


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: 1,500 more repositories would change what other tests' catalogs show.
    Without the catalog index (as an older deployment): the page reads the registry itself
    (tests/test_ui_index.py covers the page with the index)."""
    with running_stack(tmp_path_factory.mktemp("ui-stack"), catalog_index=False) as stack:
        writer = stack.token("repository:test/ui:pull,push", basic=("alice", USERS["alice"]))
        for i, tag in enumerate(["v1", "v2", "v10", "latest"]):
            push_built_image(stack, "test/ui", tag, writer, f"2026-11-0{i + 1}T08:00:00Z", layer=tag.encode() * 500)
        writer = stack.token("repository:zzz/multiarch:pull,push", basic=("alice", USERS["alice"]))
        push_index(stack, "zzz/multiarch", ["1.0", "latest"], writer, MULTIARCH)
        clone_repositories(stack, "test/ui", [f"bulk/r{i:04d}" for i in range(BULK)], ["1.0", "1.1", "latest"])
        empty_repository(stack, "bulk/r0003x")
        clone_repositories(stack, "test/ui", ["many/tags"], [f"t{i}" for i in range(1, 61)])
        catalog = stack.https("GET", "/v2/_catalog?n=1000", token=stack.token("registry:catalog:*"))
        assert len(catalog.json()["repositories"]) == 1000 and 'rel="next"' in catalog.headers["Link"]
        yield stack


@pytest.fixture(scope="module")
def browser(ui_stack: Stack) -> Iterator[Any]:
    with chromium(ui_stack) as b:
        yield b


@pytest.fixture
def desktop(browser: Any, ui_stack: Stack) -> Iterator[Page]:
    page = Page(browser, ui_stack)
    yield page
    page.close()
    assert page.errors == []


def test_first_repositories_show_after_the_first_catalog_page_only(desktop: Page) -> None:
    page = desktop.open()
    expect(page.locator(".repo").first).to_contain_text("bulk/r0000")
    before = page.evaluate("""(() => {
        const mark = performance.getEntriesByName('acmebox:repositories-visible')[0];
        return mark ? performance.getEntriesByType('resource')
            .filter((e) => e.startTime <= mark.startTime).map((e) => e.name) : null;
    })()""")
    assert before is not None, "the page marks when the first repositories are on screen"
    assert len(before) <= 7 and all(FIRST_PAINT_ALLOWED.search(u) for u in before), before
    assert sum("/v2/_catalog" in u for u in before) == 1
    assert len(desktop.paths(r"/ui-index/")) == 1, "asked the index once; without it, reads the registry"

    # Once settled, only rows in view were read: one tags/list each, tokens in batches,
    # no manifest, no second catalog page; 100 rows on the page, not 1,000.
    expect(page.locator(".repo").first.locator(".summary")).to_have_text("3 tags: latest, 1.1, 1.0")
    page.wait_for_load_state("networkidle")
    tags_lists = desktop.paths(r"/tags/list")
    assert 5 <= len(tags_lists) <= 40, len(tags_lists)
    assert len(desktop.paths(r"/auth/token")) <= 1 + len(tags_lists) // 16 + 2
    assert desktop.paths(r"/manifests/|/blobs/|_catalog\?last=") == []
    assert page.locator(".repo").count() == 100
    expect(page.locator("#status")).to_have_text("1,000 repositories so far; more load as you scroll" + HIDDEN)

    # Scrolling down adds rows, then reads the second catalog page when the first runs out.
    status = page.locator("#status")
    for _ in range(30):
        if status.inner_text() == f"{BULK + 4:,} repositories" + HIDDEN:
            break
        page.locator("#more").scroll_into_view_if_needed()
        page.wait_for_load_state("networkidle")
    expect(status).to_have_text(f"{BULK + 4:,} repositories" + HIDDEN)
    assert len(desktop.paths(r"/v2/_catalog")) == 2


def test_search_reads_more_of_the_catalog_and_the_count_follows(desktop: Page) -> None:
    page = desktop.open()
    expect(page.locator(".repo").first).to_contain_text("bulk/r0000")
    page.get_by_label("Search").fill("r1400")
    expect(page.locator(".repo")).to_have_count(1)
    expect(page.locator(".repo .repo-name")).to_have_text("bulk/r1400")
    expect(page.locator("#status")).to_have_text(f"1 of {BULK + 4:,} repositories match “r1400”")
    assert len(desktop.paths(r"/v2/_catalog\?last=bulk%2Fr099")) == 1
    assert page.url.endswith("#/?q=r1400"), "the search is in the URL"

    page.get_by_label("Search").fill("zzz")
    expect(page.locator("#status")).to_have_text(f"1 of {BULK + 4:,} repositories match “zzz”")
    # A name the catalog lists but that has no tag left is hidden once its row has read that.
    page.get_by_label("Search").fill("bulk/r000")
    expect(page.locator("#status")).to_have_text(f"10 of {BULK + 4:,} repositories match “bulk/r000”" + HIDDEN)
    expect(page.locator(".repo", has_text="bulk/r0003x")).to_have_count(0)
    expect(page.locator(".repo")).to_have_count(10)

    # repository:tag filters the tags of the rows that are open.
    page.get_by_label("Search").fill("test/ui:v1")
    page.get_by_role("button", name="Show tags of test/ui").click()
    expect(page.locator(".repo", has_text="test/ui").locator(".tag")).to_have_count(2)  # v1, v10
    assert len(desktop.paths(r"/v2/_catalog")) == 2, "the whole catalog was read once"


def test_multi_platform_index_lists_its_platforms(desktop: Page) -> None:
    page = desktop.open("#/repo/zzz/multiarch")
    card = page.locator(".tag", has=page.locator(".tag-name", has_text="latest"))
    expect(card.locator(".kind")).to_have_text("multi-platform · 2 platforms")
    rows = card.locator("tr.platform")
    expect(rows).to_have_count(2)
    assert rows.locator(".platform-name").all_inner_texts() == ["linux/amd64", "linux/arm64/v8"]
    assert rows.locator(".size").all_inner_texts() == ["293.1 KiB", "273.6 KiB"]
    # Each platform's digest whole, with its own copy button.
    digests = rows.locator(".pdigest code").all_inner_texts()
    assert len(digests) == 2 and all(re.fullmatch(r"sha256:[0-9a-f]{64}", d) for d in digests), digests
    expect(card.get_by_role("button", name="Copy digest of zzz/multiarch:latest for linux/arm64/v8")).to_be_visible()
    assert all(t.strip() not in ("", "?") for t in rows.locator(".created").all_inner_texts())
    expect(card.locator("tr.attestation")).to_have_text("+ 1 attestation (build provenance)")
    digest = card.locator("code.digest").get_attribute("title")
    assert digest and digest.startswith("sha256:")
    card.locator("summary", has_text="Pull by digest").click()
    pinned = card.locator(".pinned-command")
    expect(pinned).to_have_attribute("data-line", f"docker pull {desktop.stack.host}/zzz/multiarch@{digest}")
    assert len(desktop.paths(r"/v2/_catalog")) == 0, "a repository link does not read the catalog"


def test_tags_in_version_order_and_by_build_date(desktop: Page) -> None:
    page = desktop.open("#/repo/test/ui")
    names = page.locator(".tag .tag-name")
    expect(names).to_have_text(["latest", "v10", "v2", "v1"])  # newest first, like the list's summary
    page.get_by_label("Tag order").select_option("version")
    expect(names).to_have_text(["latest", "v1", "v2", "v10"])
    page.get_by_label("Tag order").select_option("built")  # built 11-01 (v1) .. 11-04 (latest)
    expect(names).to_have_text(["latest", "v10", "v2", "v1"])
    card = page.locator(".tag", has=page.locator(".tag-name", has_text="v10"))
    expect(card.locator(".size dd")).to_have_text(re.compile(r"^\d+\.\d KiB$"))
    expect(card.locator(".kind")).to_have_text("linux/amd64")
    expect(card.locator(".created time")).to_have_attribute("datetime", "2026-11-03T08:00:00.000Z")
    page.get_by_label("Filter tags").fill("v1")
    expect(names).to_have_text(["v10", "v1"])


def test_a_link_opens_one_repository_and_leads_back(desktop: Page) -> None:
    page = desktop.open("#/repo/bulk/r1499")
    expect(page.locator(".repo-page-title")).to_have_text("bulk/r1499")
    expect(page.locator(".repo-page-title")).to_be_focused()
    expect(page.locator(".tag .tag-name")).to_have_text(["latest", "1.1", "1.0"])
    assert desktop.paths(r"/v2/_catalog") == []
    page.get_by_role("link", name="← All repositories").click()
    expect(page.locator(".repo").first).to_contain_text("bulk/r0000")
    page.get_by_role("link", name="bulk/r0001").click()
    expect(page).to_have_url(re.compile(r"#/repo/bulk/r0001$"))
    expect(page.locator(".repo-page-title")).to_have_text("bulk/r0001")
    page.go_back()
    expect(page.locator(".repo-name").nth(1)).to_be_focused()

    page = desktop.open("#/repo/no/such")
    expect(page.locator("#repo-view .error")).to_have_text(
        "There is no repository named no/such here (or all its tags were deleted)."
    )


def test_keyboard_and_labels(desktop: Page) -> None:
    page = desktop.open()
    expect(page.locator(".repo").first).to_contain_text("bulk/r0000")
    page.keyboard.press("/")
    expect(page.get_by_label("Search")).to_be_focused()
    page.keyboard.type("test/ui")
    expect(page.locator(".repo")).to_have_count(1)
    for _ in range(4):  # theme, log in, the row's link, its toggle
        page.keyboard.press("Tab")
    toggle = page.get_by_role("button", name="Show tags of test/ui")
    expect(toggle).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Hide tags of test/ui")).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("button", name="Copy docker pull test/ui:v10")).to_be_visible()
    theme = page.get_by_role("button", name=re.compile("Colour theme"))
    theme.click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    theme.click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_and_a_phone(browser: Any, ui_stack: Stack, scheme: str) -> None:
    wide = Page(browser, ui_stack, width=1366, height=900, color_scheme=scheme)
    try:
        page = wide.open("#/?q=test")
        page.get_by_role("button", name="Show tags of test/ui").click()
        expect(page.locator(".repo", has_text="test/ui").locator(".tag:not(.pending)")).to_have_count(4)
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-desktop-{scheme}.png"), full_page=True)
        page = wide.open("")
        expect(page.locator(".repo").nth(10).locator(".summary")).to_contain_text("tags")
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-desktop-list-{scheme}.png"))
        page = wide.open("#/repo/zzz/multiarch")
        expect(page.locator(".tag:not(.pending)")).to_have_count(2)
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-desktop-multiarch-{scheme}.png"), full_page=True)
        assert wide.errors == []
    finally:
        wide.close()

    phone = Page(browser, ui_stack, width=390, height=844, is_mobile=True, has_touch=True,
                 color_scheme=scheme, permissions=["clipboard-read", "clipboard-write"])
    try:
        page = phone.open("#/repo/test/ui")
        card = page.locator(".tag", has=page.locator(".tag-name", has_text="v10"))
        expect(card).not_to_have_class(re.compile("pending"))
        line = f"docker pull {ui_stack.host}/test/ui:v10"
        command = card.locator(".pull-command").first
        expect(command).to_have_text(line)
        # Readable: nothing of the line is hidden (no sideways scrolling), all of it on screen.
        assert command.evaluate("(e) => e.scrollWidth <= e.clientWidth")
        box = command.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        card.get_by_role("button", name="Copy docker pull test/ui:v10").click()
        assert page.evaluate("navigator.clipboard.readText()") == line
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-phone-{scheme}.png"), full_page=True)
        page = phone.open("#/repo/zzz/multiarch")
        expect(page.locator(".tag:not(.pending)")).to_have_count(2)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-phone-multiarch-{scheme}.png"), full_page=True)
        page = phone.open("")
        expect(page.locator(".repo").nth(5).locator(".summary")).to_contain_text("tags")
        page.screenshot(path=str(ARTIFACTS / f"registry-ui-phone-list-{scheme}.png"))
        assert phone.errors == []
    finally:
        phone.close()


def test_long_tag_lists_come_fifty_at_a_time(desktop: Page) -> None:
    page = desktop.open("#/repo/many/tags")
    names = page.locator(".tag .tag-name")
    # Sixty tags open as the compact table: one line each, not a card each.
    expect(page.locator("table.tag-table tr.tag")).to_have_count(50)
    assert names.all_inner_texts()[:3] == ["t60", "t59", "t58"] and names.nth(49).inner_text() == "t11"
    expect(page.locator("table.tag-table tr.tag:not(.pending)").first).to_be_visible()
    table_height = page.evaluate("document.documentElement.scrollHeight")
    page.get_by_label("Show tags as").select_option("cards")
    expect(page.locator("ul.tags li.tag")).to_have_count(50)
    cards_height = page.evaluate("document.documentElement.scrollHeight")
    assert table_height * 2.5 < cards_height, (table_height, cards_height)
    expect(page.locator(".count")).to_have_text("60 tags")
    page.get_by_role("button", name="Show 10 more tags of 10").click()
    expect(names).to_have_count(60)
    expect(names.nth(50)).to_be_focused()
    # Only what came near the screen was read (the table's first lines, the cards around the
    # focus), not all sixty.
    page.wait_for_load_state("networkidle")
    assert len(desktop.paths(r"/v2/many/tags/manifests/")) < 60


def test_a_token_service_that_takes_one_scope_at_a_time(desktop: Page) -> None:
    """Fault in front of the real token service: requests with several scopes get 400."""
    refused: list[str] = []

    def one_scope_only(route: Any) -> None:
        if route.request.url.count("scope=") > 1:
            refused.append(route.request.url)
            route.fulfill(status=400, body='{"errors": [{"code": "UNSUPPORTED"}]}')
        else:
            route.continue_()

    desktop.page.route(re.compile(r"/auth/token\?"), one_scope_only)
    page = desktop.open()
    expect(page.locator(".repo").nth(8).locator(".summary")).to_have_text("3 tags: latest, 1.1, 1.0")
    assert refused, "the page asked for several scopes at once first"


def test_a_401_challenge_is_followed(desktop: Page) -> None:
    """Fault in front of the real registry: the first catalog answer is a 401 whose challenge
    names the token service; the page asks it and tries again."""
    challenged: list[str] = []

    def challenge_once(route: Any) -> None:
        if challenged:
            route.continue_()
            return
        challenged.append(route.request.url)
        realm = f"https://{desktop.stack.host}/auth/token"
        route.fulfill(status=401, body="{}", headers={
            "WWW-Authenticate": f'Bearer realm="{realm}",service="registry",scope="registry:catalog:*"'})

    desktop.page.route(re.compile(r"/v2/_catalog"), challenge_once)
    page = desktop.open()
    expect(page.locator(".repo").first).to_contain_text("bulk/r0000")
    assert len(challenged) == 1
    assert len(desktop.paths(r"/auth/token\?.*catalog")) == 2


def test_the_list_and_the_repository_page_agree_and_settings_sit_with_the_tags(desktop: Page) -> None:
    page = desktop.open("#/?q=test/ui")
    summary = page.locator(".repo", has_text="test/ui").locator(".summary")
    expect(summary).to_have_text("4 tags: latest, v10, v2, …")
    assert page.locator("header select").count() == 0, "no tag setting on the repository list"
    page.get_by_role("link", name="test/ui").click()
    names = page.locator(".tag .tag-name")
    expect(names).to_have_text(["latest", "v10", "v2", "v1"])
    view = page.locator("#repo-view")
    expect(view.get_by_label("Tag order")).to_be_visible()
    filter_box = page.get_by_label("Filter tags")
    placeholder = filter_box.get_attribute("placeholder") or ""
    assert " " in placeholder and not re.search(r"\d", placeholder), "the placeholder reads as a hint, not a tag"
