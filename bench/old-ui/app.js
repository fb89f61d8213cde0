// A read-only view of the registry: repositories, tags, digest, size, creation time and a
// copy-able pull line. It asks the token service for anonymous tokens, as any client does.
"use strict";

const MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

async function token(scope) {
  const r = await fetch(`/auth/token?service=registry&scope=${encodeURIComponent(scope)}`);
  if (!r.ok) throw new Error(`token service answered ${r.status}`);
  return (await r.json()).token;
}

async function get(path, bearer, accept) {
  const headers = { Authorization: `Bearer ${bearer}` };
  if (accept) headers.Accept = accept;
  const r = await fetch(path, { headers });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r;
}

function humanSize(bytes) {
  if (bytes == null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function describe(repo, tag, bearer) {
  const r = await get(`/v2/${repo}/manifests/${encodeURIComponent(tag)}`, bearer, MANIFEST_TYPES);
  const digest = r.headers.get("Docker-Content-Digest");
  const manifest = await r.json();
  if (manifest.manifests) {  // a multi-platform index
    const size = manifest.manifests.reduce((n, m) => n + (m.size || 0), 0);
    return { digest, size: null, created: null, platforms: manifest.manifests.length, indexSize: size };
  }
  const layers = manifest.layers || [];
  const size = layers.reduce((n, l) => n + l.size, 0) + (manifest.config ? manifest.config.size : 0);
  let created = null;
  if (manifest.config) {
    try {
      created = (await (await get(`/v2/${repo}/blobs/${manifest.config.digest}`, bearer)).json()).created || null;
    } catch (e) { /* a config we cannot read: leave the date out */ }
  }
  return { digest, size, created };
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function tagCard(repo, tag, info) {
  const card = el("li", "tag");
  card.dataset.search = `${repo}:${tag}`.toLowerCase();
  const meta = el("div", "meta");
  meta.append(el("span", "name", tag));
  meta.append(el("span", "size", info.platforms ? `${info.platforms} platforms` : humanSize(info.size)));
  meta.append(el("span", "created", info.created ? new Date(info.created).toLocaleString() : ""));
  meta.append(el("span", "digest", info.digest || ""));
  const pull = el("div", "pull");
  const line = `docker pull ${location.host}/${repo}:${tag}`;
  const code = el("code", "pull-command", line);
  const button = el("button", "copy", "Copy");
  button.type = "button";
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(line);
    } catch (e) {  // no clipboard API (plain http, old browser): select the text instead
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  pull.append(code, button);
  card.append(meta, pull);
  return card;
}

async function repoItem(repo) {
  // One repository's element, or null when it has no tags (deleted images leave empty
  // repositories behind) or cannot be read: one bad repository must not hide the others.
  try {
    const bearer = await token(`repository:${repo}:pull`);
    const tags = (await (await get(`/v2/${repo}/tags/list`, bearer)).json()).tags || [];
    if (!tags.length) return null;
    const infos = await Promise.all(tags.sort().map((tag) => describe(repo, tag, bearer)));
    const item = el("li", "repo");
    item.dataset.search = repo.toLowerCase();
    item.append(el("h2", null, repo));
    const tagList = el("ul", "tags");
    tags.forEach((tag, i) => tagList.append(tagCard(repo, tag, infos[i])));
    item.append(tagList);
    return item;
  } catch (e) {
    console.warn(`skipping ${repo}: ${e.message}`);
    return null;
  }
}

async function load() {
  for (const node of document.querySelectorAll("#host, .host")) node.textContent = location.host;
  const status = document.getElementById("status");
  const list = document.getElementById("repos");
  try {
    const catalog = await (await get("/v2/_catalog?n=1000", await token("registry:catalog:*"))).json();
    const items = (await Promise.all((catalog.repositories || []).map(repoItem))).filter(Boolean);
    list.append(...items);
    status.textContent = items.length ? `${items.length} repositor${items.length === 1 ? "y" : "ies"}` : "No images yet.";
  } catch (e) {
    status.textContent = `Could not read the registry: ${e.message}`;
  }
}

function filter(query) {
  const q = query.trim().toLowerCase();
  for (const repo of document.querySelectorAll(".repo")) {
    let any = false;
    for (const tag of repo.querySelectorAll(".tag")) {
      const match = !q || tag.dataset.search.includes(q);
      tag.classList.toggle("hidden", !match);
      any = any || match;
    }
    repo.classList.toggle("hidden", !any);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("search").addEventListener("input", (e) => filter(e.target.value));
  load();
});
