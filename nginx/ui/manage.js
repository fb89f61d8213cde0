// Deleting from the page, for a user the token service allows to (acmebox grants `delete` only to
// users its ACL lets write the repository; without an ACL file, to every user in htpasswd).
//
// Login: the user name and password go to the token service as Basic credentials, the way
// `docker login` sends them, and stay in this page's memory only (never in localStorage,
// cookies or the URL); reloading the page or "Log out" forgets them.
//
// Distribution 2.8 deletes manifests by digest only: deleting a tag deletes the manifest it
// points at, and with it every tag that points at the same digest. The confirmation names them
// all before anything is sent. The blobs stay on disk until the registry's garbage collection
// (`acmebox gc`).
"use strict";

const session = { user: null, basic: null };

function base64Utf8(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

// The `access` claim of a token (what the token service granted), without checking the
// signature: the registry checks that; the page only wants to know what to offer.
function grantedActions(tokenValue, repo) {
  try {
    const payload = JSON.parse(atob(tokenValue.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    const entry = (payload.access || []).find((a) => a.type === "repository" && a.name === repo);
    return new Set(entry ? entry.actions : []);
  } catch (e) {
    return new Set();
  }
}

async function userToken(scope) {
  const r = await fetch(`${auth.realm}?service=${encodeURIComponent(auth.service)}&scope=${encodeURIComponent(scope)}`,
    // credentials "omit": a 401's `WWW-Authenticate: Basic` must not open the browser's own
    // login prompt (or fill the browser's auth cache); the header set here is still sent.
    { headers: { Authorization: `Basic ${session.basic}` }, cache: "no-store", credentials: "omit" });
  if (r.status === 401) throw new Error("the user name or password is wrong");
  if (r.status === 429) throw new Error(`too many login attempts; try again in ${r.headers.get("Retry-After") || "a few"} s`);
  if (!r.ok) throw new Error(`the token service answered ${r.status}`);
  const body = await r.json();
  return body.token || body.access_token;
}

// ------------------------------------------------------------------------------------ login

function loginDialog() {
  let dialog = document.getElementById("login-dialog");
  if (dialog) return dialog;
  dialog = el("dialog", "manage-dialog");
  dialog.id = "login-dialog";
  dialog.setAttribute("aria-labelledby", "login-title");
  const form = el("form");
  form.method = "dialog";
  const title = el("h2", null, "Log in to delete");
  title.id = "login-title";
  const note = el("p", "note", "Sent to this registry's token service only; kept in this page until you log out or leave.");
  const user = el("input");
  user.name = "username";
  user.autocomplete = "username";
  user.required = true;
  const password = el("input");
  password.type = "password";
  password.name = "password";
  password.autocomplete = "current-password";
  password.required = true;
  const userLabel = el("label", null);
  userLabel.append(el("span", "label", "User name"), user);
  const passLabel = el("label", null);
  passLabel.append(el("span", "label", "Password"), password);
  const error = el("p", "error");
  error.setAttribute("role", "alert");
  const actions = el("div", "dialog-actions");
  const submit = el("button", "primary", "Log in");
  submit.type = "submit";
  const cancel = el("button", null, "Cancel");
  cancel.type = "button";
  cancel.addEventListener("click", () => dialog.close());
  actions.append(submit, cancel);
  form.append(title, note, userLabel, passLabel, error, actions);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    session.basic = base64Utf8(`${user.value}:${password.value}`);
    try {
      await userToken("registry:catalog:*");  // checks the password, grants nothing to write
      session.user = user.value;
      password.value = "";
      dialog.close();
      loggedIn();
    } catch (err) {
      session.basic = null;
      error.textContent = `Not logged in: ${err.message}.`;
    }
  });
  dialog.append(form);
  document.body.append(dialog);
  return dialog;
}

function loggedIn() {
  const button = document.getElementById("login");
  button.textContent = session.user ? `Log out ${session.user}` : "Log in";
  button.setAttribute("aria-label", session.user ? `Log out ${session.user}` : "Log in to delete");
  for (const card of document.querySelectorAll(".tag")) {
    if (card.tagInfo) manageCard(card, card.dataset.repo, card.dataset.tag, card.tagInfo);
  }
  announce(session.user ? `Logged in as ${session.user}` : "Logged out");
}

// ------------------------------------------------------------------------------------ delete

// Every tag of `repo` that points at `digest` (the registry deletes them together).
async function tagsAt(repo, digest) {
  if (catalogIndex.on) {
    try {
      const body = await indexGet(`tags/${repo}`);
      const fromIndex = body.tags.filter((t) => t.digest === digest).map((t) => t.tag);
      if (fromIndex.length) return fromIndex;
    } catch (e) { /* not indexed yet: ask the registry */ }
  }
  const tags = await loadTags(repo);
  const infos = await Promise.all(tags.map((t) => describe(repo, t).then((i) => [t, i.digest], () => [t, null])));
  return infos.filter(([, d]) => d === digest).map(([t]) => t);
}

function confirmDialog(text, what) {
  return new Promise((resolve) => {
    const dialog = el("dialog", "manage-dialog");
    dialog.setAttribute("role", "alertdialog");
    dialog.setAttribute("aria-label", `Confirm deleting ${what}`);
    const body = el("div", "confirm-text");
    for (const line of text) body.append(el("p", null, line));
    const yes = el("button", "danger", `Delete ${what}`);
    yes.type = "button";
    const no = el("button", null, "Cancel");
    no.type = "button";
    const actions = el("div", "dialog-actions");
    actions.append(yes, no);
    dialog.append(body, actions);
    document.body.append(dialog);
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    yes.addEventListener("click", () => done(true));
    no.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", () => done(false));
    dialog.showModal();
    no.focus();
  });
}

function report(card, text, isError) {
  let line = card.querySelector(".manage-result");
  if (!line) {
    line = el("p", "manage-result");
    line.setAttribute("role", "status");
    card.append(line);
  }
  line.className = `manage-result${isError ? " error" : ""}`;
  line.textContent = text;
  announce(text);
}

async function deleteManifest(card, repo, tag, digest, byTag) {
  let going;
  try {
    going = await tagsAt(repo, digest);
  } catch (e) {
    report(card, `Could not read the tags of ${repo}: ${e.message}`, true);
    return;
  }
  if (!going.includes(tag) && byTag) going.push(tag);
  const names = going.map((t) => `${repo}:${t}`).join(", ") || "no tag";
  const text = [
    byTag ? `Delete the tag ${repo}:${tag}?` : `Delete the manifest ${digest} from ${repo}?`,
    `This deletes the manifest ${digest} and every tag that points at it: ${names}.`,
    "Anyone pulling these tags or this digest gets “manifest unknown” from then on. The layers' space is freed by the next garbage collection.",
  ];
  if (!(await confirmDialog(text, byTag ? `${repo}:${tag}` : digest))) return;
  let bearer;
  try {
    bearer = await userToken(`repository:${repo}:delete`);
  } catch (e) {
    report(card, `Not deleted: ${e.message}.`, true);
    return;
  }
  if (!grantedActions(bearer, repo).has("delete")) {
    report(card, `Not deleted: ${session.user} may not delete in ${repo} (the token service did not grant it).`, true);
    return;
  }
  const r = await fetch(`/v2/${repo}/manifests/${digest}`, { method: "DELETE", headers: { Authorization: `Bearer ${bearer}` } });
  if (r.status === 202 || r.status === 200) {
    forget(repo);
    report(card, `Deleted ${names} (${digest}).`, false);
    card.classList.add("deleted");
    return;
  }
  let message = `the registry answered ${r.status}`;
  try { message = ((await r.json()).errors || [])[0].message || message; } catch (e) { /* not JSON */ }
  if (r.status === 405) message = "the registry does not allow deleting (storage.delete.enabled is off)";
  if (r.status === 503 && r.headers.get("Retry-After")) message += `; try again in ${r.headers.get("Retry-After")} s`;
  report(card, `Not deleted: ${message}.`, true);
}

// What the page knew of `repo` is stale now: read its tags again where they are shown.
function forget(repo) {
  tagsCache.delete(repo);
  for (const key of [...detailsCache.keys()]) if (key.startsWith(`${repo}:`)) detailsCache.delete(key);
  for (const key of [...manifestCache.keys()]) if (key.startsWith(`${repo}@`)) manifestCache.delete(key);
  const lists = [openLists.get(repo), repoPage && repoPage.repo === repo ? repoPage.list : null].filter(Boolean);
  setTimeout(() => {
    loadTags(repo).then((tags) => { for (const l of lists) { l.cards.clear(); l.setTags(tags); } }, () => {});
  }, 1500);  // long enough to read the message; the cards of what was deleted then go
}

// The delete buttons of one tag card or table row, while someone is logged in.
function manageCard(card, repo, tag, info) {
  card.tagInfo = info;
  const old = card.querySelector(".manage");
  if (old) old.remove();
  if (!session.user || !info.digest) return;
  const box = el(card.dataset.view === "row" ? "span" : "div", "manage");
  const byTag = el("button", "danger", "Delete tag…");
  byTag.type = "button";
  byTag.setAttribute("aria-label", `Delete tag ${repo}:${tag}`);
  byTag.addEventListener("click", () => deleteManifest(card, repo, tag, info.digest, true));
  box.append(byTag);
  if (card.dataset.view !== "row") {
    const byDigest = el("button", "danger", "Delete digest…");
    byDigest.type = "button";
    byDigest.setAttribute("aria-label", `Delete digest ${info.digest} of ${repo}`);
    byDigest.addEventListener("click", () => deleteManifest(card, repo, tag, info.digest, false));
    box.append(" ", byDigest);
  }
  (card.dataset.view === "row" ? card.querySelector(".pull-cell") : card).append(box);
}

cardExtras.push(manageCard);

document.addEventListener("DOMContentLoaded", () => {
  const button = el("button", null, "Log in");
  button.id = "login";
  button.type = "button";
  button.setAttribute("aria-label", "Log in to delete");
  button.addEventListener("click", () => {
    if (session.user) {
      session.user = null;
      session.basic = null;
      loggedIn();
      return;
    }
    const dialog = loginDialog();
    dialog.querySelector(".error").textContent = "";
    dialog.showModal();
    dialog.querySelector("input[name=username]").focus();
  });
  document.querySelector(".controls").append(button);
});
