// A read-only view of the registry for people who pull from it. Static, no build step, no
// dependencies; it speaks the registry API like any client (anonymous bearer tokens, the
// WWW-Authenticate challenge when its guess of the token service is wrong).
//
// Scale: nothing is read before it is needed. The catalog is read one page (`n`, `Link`) at a
// time, when the list runs out or a search needs more; a repository's tags when its row comes
// into view; a tag's manifest and image config when its card comes into view. Every request
// goes through one queue (CONCURRENCY at a time, skipped if nobody looks any more) and every
// answer is cached for the life of the page.
"use strict";

const INDEX_TYPES = new Set([
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);
const IMAGE_CONFIG_TYPES = new Set([
  "application/vnd.oci.image.config.v1+json",
  "application/vnd.docker.container.image.v1+json",
]);
const MANIFEST_TYPES = [
  ...INDEX_TYPES,
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5",
].join(", ");
const CATALOG_PAGE = 1000;  // distribution 2.8 refuses n above its catalog.maxentries (1000)
const TAGS_PAGE = 1000;     // 2.8 ignores n on tags/list and sends all; v3 pages with Link
const ROWS_CHUNK = 100;     // repository rows added to the page at a time
const TAGS_CHUNK = 50;      // tag cards (or table rows) added at a time
const TABLE_FROM = 20;      // a repository with more tags opens as a compact table, unless chosen otherwise
const CONCURRENCY = 6;      // registry requests in flight
const TOKEN_BATCH = 16;     // repository scopes asked for in one token request
// Newest first by default: the order the list's row summary uses, so both views agree.
const SORTS = ["version-desc", "version", "built"];
const VIEWS = ["auto", "cards", "table"];
const THEMES = ["auto", "light", "dark"];

// ---------------------------------------------------------------------------------- network

class HttpError extends Error {
  constructor(path, status, code) {
    super(`${status}${code ? ` ${code}` : ""}`);
    this.path = path;
    this.status = status;
    this.code = code;
  }
}
class Skipped extends Error {}  // queued work that nobody wanted any more when its turn came

const queue = { running: 0, waiting: [] };

// Runs `task` when one of CONCURRENCY slots is free, unless `wanted()` says no by then (a row
// scrolled past before its turn): that rejects with Skipped so the caller can ask again later.
function schedule(task, wanted = () => true) {
  return new Promise((resolve, reject) => {
    queue.waiting.push({ task, wanted, resolve, reject });
    pump();
  });
}

function pump() {
  while (queue.running < CONCURRENCY && queue.waiting.length) {
    const job = queue.waiting.shift();
    if (!job.wanted()) { job.reject(new Skipped()); continue; }
    queue.running++;
    job.task().then(job.resolve, job.reject).finally(() => { queue.running--; pump(); });
  }
}

// The token service as the registry announces it; these defaults match the compose file and
// save a round trip, and a 401's challenge corrects them.
const auth = { realm: "/auth/token", service: "registry" };
const tokens = new Map();   // scope -> { token, expires (ms epoch) }
let pendingScopes = new Map();  // scope -> [{ resolve, reject }]
let flushTimer = null;

function token(scope) {
  const cached = tokens.get(scope);
  if (cached && cached.expires > Date.now()) return Promise.resolve(cached.token);
  return new Promise((resolve, reject) => {
    if (!pendingScopes.has(scope)) pendingScopes.set(scope, []);
    pendingScopes.get(scope).push({ resolve, reject });
    // Scopes asked for in the same turn (all rows that just came into view) share one request.
    if (pendingScopes.size >= TOKEN_BATCH) flushTokens();
    else if (flushTimer === null) flushTimer = setTimeout(flushTokens, 0);
  });
}

async function flushTokens() {
  clearTimeout(flushTimer);
  flushTimer = null;
  const batch = pendingScopes;
  pendingScopes = new Map();
  if (batch.size) await fetchToken(batch);
}

async function fetchToken(batch) {
  const scopes = [...batch.keys()].map((s) => `&scope=${encodeURIComponent(s)}`).join("");
  try {
    const r = await fetch(`${auth.realm}?service=${encodeURIComponent(auth.service)}${scopes}`);
    if (!r.ok) throw new HttpError(auth.realm, r.status, "token service");
    const body = await r.json();
    const value = body.token || body.access_token;
    if (!value) throw new Error("token service sent no token");
    // Renew a little early: a token that expires in flight costs a 401 and a retry.
    const expires = Date.now() + Math.max(10, (body.expires_in || 60) - 10) * 1000;
    for (const [scope, waiters] of batch) {
      tokens.set(scope, { token: value, expires });
      for (const w of waiters) w.resolve(value);
    }
  } catch (e) {
    // A token service that takes one scope per request (or limits the query): ask singly.
    if (batch.size > 1 && e instanceof HttpError && e.status >= 400 && e.status < 500) {
      await Promise.all([...batch].map(([scope, waiters]) => fetchToken(new Map([[scope, waiters]]))));
      return;
    }
    for (const waiters of batch.values()) for (const w of waiters) w.reject(e);
  }
}

function learnChallenge(header) {
  // Bearer realm="https://host/auth/token",service="registry",scope="..."
  if (!header || !/^Bearer\s/i.test(header)) return false;
  const params = Object.fromEntries([...header.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
  if (!params.realm) return false;
  const changed = params.realm !== auth.realm || (params.service || "") !== auth.service;
  auth.realm = params.realm;
  auth.service = params.service || "";
  return changed;
}

// One GET to the registry with a token for `scope`, through the queue.
function registryGet(path, scope, { accept, wanted } = {}) {
  // Ask for the token now, not when the queue gets to it: everything queued in this turn
  // then shares one token request.
  const early = token(scope).catch(() => null);
  return schedule(async () => {
    for (let attempt = 0; ; attempt++) {
      const bearer = (attempt === 0 && (await early)) || (await token(scope));
      const headers = { Authorization: `Bearer ${bearer}` };
      if (accept) headers.Accept = accept;
      const r = await fetch(path, { headers });
      if (r.status === 401 && attempt === 0) {
        learnChallenge(r.headers.get("WWW-Authenticate"));
        tokens.delete(scope);  // expired, or issued by the wrong realm: ask again once
        continue;
      }
      if (!r.ok) {
        let code = "";
        try { code = ((await r.json()).errors || [])[0].code || ""; } catch (e) { /* not JSON */ }
        throw new HttpError(path, r.status, code);
      }
      return r;
    }
  }, wanted);
}

function nextLink(header) {
  // RFC 8288: </v2/_catalog?last=a%2Fb&n=1000>; rel="next"
  const m = header && header.match(/<([^>]+)>\s*;\s*rel="?next"?/);
  return m ? m[1] : null;
}

const pullScope = (repo) => `repository:${repo}:pull`;

// ---------------------------------------------------------------------------------- data

const catalog = { names: [], next: `/v2/_catalog?n=${CATALOG_PAGE}`, done: false, loading: null, error: null };

// Reads the next catalog page (one at a time). Resolves to whether anything new came.
function loadCatalogPage() {
  if (catalog.done) return Promise.resolve(false);
  if (!catalog.loading) {
    catalog.loading = (async () => {
      const r = await registryGet(catalog.next, "registry:catalog:*");
      const names = (await r.json()).repositories || [];
      catalog.names.push(...names);
      const next = nextLink(r.headers.get("Link"));
      // An empty page or a Link to itself would loop forever: treat both as the end.
      if (next && names.length && next !== catalog.next) catalog.next = next;
      else catalog.done = true;
      return names.length > 0;
    })().catch((e) => { catalog.error = e; catalog.done = true; return false; })
      .finally(() => { catalog.loading = null; });
  }
  return catalog.loading;
}

// repo -> Promise<string[]>: [] for a repository without tags, with .unknown set when the
// registry does not know the name at all.
const tagsCache = new Map();

function loadTags(repo, wanted) {
  let p = tagsCache.get(repo);
  if (!p) {
    p = (async () => {
      const tags = [];
      let path = `/v2/${repo}/tags/list?n=${TAGS_PAGE}`;
      while (path) {
        let r;
        try {
          r = await registryGet(path, pullScope(repo), { wanted: tags.length ? undefined : wanted });
        } catch (e) {
          // Deleting every tag can leave a name in the catalog that tags/list calls unknown.
          if (e instanceof HttpError && e.status === 404) return Object.assign(tags, { unknown: true });
          throw e;
        }
        tags.push(...((await r.json()).tags || []));
        const next = nextLink(r.headers.get("Link"));
        path = next && next !== path ? next : null;
      }
      return tags;
    })();
    tagsCache.set(repo, p);
    p.catch(() => tagsCache.delete(repo));  // skipped or failed: ask again next time it is seen
  }
  return p;
}

const manifestCache = new Map();  // "repo@ref" -> Promise<{ digest, manifest }>
const blobCache = new Map();      // digest -> Promise<object|null>

function fetchManifest(repo, ref, wanted) {
  const key = `${repo}@${ref}`;
  let p = manifestCache.get(key);
  if (!p) {
    p = registryGet(`/v2/${repo}/manifests/${encodeURIComponent(ref)}`, pullScope(repo),
      { accept: MANIFEST_TYPES, wanted })
      .then(async (r) => {
        const manifest = await r.json();
        const digest = r.headers.get("Docker-Content-Digest") || (ref.startsWith("sha256:") ? ref : null);
        const mediaType = manifest.mediaType || (r.headers.get("Content-Type") || "").split(";")[0];
        const result = { digest, manifest, mediaType };
        if (digest) manifestCache.set(`${repo}@${digest}`, Promise.resolve(result));
        return result;
      });
    manifestCache.set(key, p);
    p.catch(() => manifestCache.delete(key));
  }
  return p;
}

function fetchConfig(repo, descriptor) {
  if (!descriptor || !IMAGE_CONFIG_TYPES.has(descriptor.mediaType)) return Promise.resolve(null);
  let p = blobCache.get(descriptor.digest);
  if (!p) {
    p = registryGet(`/v2/${repo}/blobs/${descriptor.digest}`, pullScope(repo)).then((r) => r.json());
    blobCache.set(descriptor.digest, p);
    p.catch(() => blobCache.delete(descriptor.digest));
  }
  return p.catch(() => null);  // an unreadable config only costs the date and platform
}

function platformName(p) {
  if (!p || !p.os) return "";
  return [p.os, p.architecture, p.variant].filter(Boolean).join("/");
}

// What one manifest (not an index) says: compressed size, build time, platform.
async function imageFacts(repo, { manifest, mediaType }) {
  if (Array.isArray(manifest.fsLayers)) {  // schema 1: no sizes, the date is in the history
    let created = null;
    try { created = JSON.parse(manifest.history[0].v1Compatibility).created || null; } catch (e) { /* none */ }
    return { size: null, created, platform: manifest.architecture ? `linux/${manifest.architecture}` : "" };
  }
  const layers = manifest.layers || [];
  const size = layers.reduce((n, l) => n + (l.size || 0), 0) + (manifest.config ? manifest.config.size || 0 : 0);
  const config = await fetchConfig(repo, manifest.config);
  const artifact = manifest.artifactType || (manifest.config && !IMAGE_CONFIG_TYPES.has(manifest.config.mediaType)
    ? manifest.config.mediaType : null);
  return {
    size, created: (config && config.created) || null, platform: config ? platformName(config) : "",
    artifact: mediaType && artifact ? artifact : null,
  };
}

const isAttestation = (m) =>
  (m.annotations && m.annotations["vnd.docker.reference.type"] === "attestation-manifest") ||
  (m.platform && m.platform.os === "unknown");

const detailsCache = new Map();  // "repo:tag" -> Promise<details>

// Everything a tag card shows. For an index: every platform with its own size and date.
function describe(repo, tag, wanted) {
  const key = `${repo}:${tag}`;
  let p = detailsCache.get(key);
  if (!p) {
    p = (async () => {
      const top = await fetchManifest(repo, tag, wanted);
      if (INDEX_TYPES.has(top.mediaType) || Array.isArray(top.manifest.manifests)) {
        const entries = top.manifest.manifests || [];
        const images = entries.filter((m) => !isAttestation(m));
        const platforms = await Promise.all(images.map(async (m) => {
          try {
            const facts = await imageFacts(repo, await fetchManifest(repo, m.digest));
            return { ...facts, platform: platformName(m.platform) || facts.platform, digest: m.digest };
          } catch (e) {
            return { platform: platformName(m.platform) || "?", digest: m.digest, size: null, created: null };
          }
        }));
        const dates = platforms.map((p) => p.created).filter(Boolean).sort();
        return { kind: "index", digest: top.digest, platforms, created: dates.pop() || null,
          attestations: entries.length - images.length };
      }
      return { kind: "image", digest: top.digest, ...(await imageFacts(repo, top)) };
    })();
    detailsCache.set(key, p);
    p.catch(() => detailsCache.delete(key));
  }
  return p;
}

// ---------------------------------------------------------------------------------- formats

const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });
const relative = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const counted = new Intl.NumberFormat("en");

function humanSize(bytes) {
  if (bytes == null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(date) {
  const seconds = (date.getTime() - Date.now()) / 1000;
  const steps = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600],
    ["minute", 60]];
  for (const [unit, size] of steps) {
    if (Math.abs(seconds) >= size) return relative.format(Math.round(seconds / size), unit);
  }
  return "just now";
}

const shortDigest = (d) => (d ? d.replace(/^(sha256:[0-9a-f]{12})[0-9a-f]+$/, "$1…") : "?");
const plural = (n, one, many) => `${counted.format(n)} ${n === 1 ? one : many}`;

// `latest` comes first in both version orders: it is what a plain `docker pull` gets.
function sortTags(tags, order, repo) {
  const byVersion = [...tags].sort(collator.compare);
  if (order === "version-desc") byVersion.reverse();
  if (order !== "built") {
    const latest = byVersion.indexOf("latest");
    if (latest > 0) byVersion.unshift(...byVersion.splice(latest, 1));
    return byVersion;
  }
  const dates = builtDates(repo);
  // Newest build first; tags whose date is not known (yet) after them, in version order.
  return byVersion.sort((a, b) => (dates.get(b) || "").localeCompare(dates.get(a) || ""));
}

const knownDates = new Map();  // repo -> Map(tag -> ISO date), filled as details arrive
const builtDates = (repo) => knownDates.get(repo) || new Map();

// ---------------------------------------------------------------------------------- DOM helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function announce(text) {
  const live = document.getElementById("announce");
  live.textContent = "";
  setTimeout(() => { live.textContent = text; }, 50);  // a changed node is read again
}

async function copy(text, button, what) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // no clipboard API (plain http, old browser): select the text instead
    const code = button.parentElement.querySelector("code");
    if (code) {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
    announce(`Selected ${what}; press Ctrl+C to copy`);
    return;
  }
  const label = button.textContent;
  button.textContent = "Copied";
  announce(`Copied ${what}`);
  setTimeout(() => { button.textContent = label; }, 1500);
}

function copyButton(text, what, label = "Copy") {
  const button = el("button", "copy", label);
  button.type = "button";
  button.setAttribute("aria-label", `Copy ${what}`);
  button.addEventListener("click", () => copy(text, button, what));
  return button;
}

// The pull line may break after each '/' and before the tag's ':' or the '@', never inside
// the host's port, so on a phone the tag wraps onto the next line instead of running off
// the edge (and anywhere at all if a piece is still too long).
function pullLine(line, what, extraClass) {
  const box = el("div", "pull");
  const code = el("code", `pull-command${extraClass ? ` ${extraClass}` : ""}`);
  const parts = line.split(/(?<=\/)/);
  const last = parts.pop();
  const at = last.indexOf("@") >= 0 ? last.indexOf("@") : last.lastIndexOf(":");
  if (at > 0) parts.push(last.slice(0, at), last.slice(at)); else parts.push(last);
  for (const part of parts) code.append(part, document.createElement("wbr"));
  code.dataset.line = line;
  box.append(code, copyButton(line, what));
  return box;
}

function timeNode(iso) {
  if (!iso) return document.createTextNode("?");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return document.createTextNode("?");
  const t = el("time", null, ago(date));
  t.dateTime = date.toISOString();
  t.title = absolute.format(date);
  return t;
}

function fact(label, className, content) {
  const wrap = el("div", className);
  const dd = el("dd");
  dd.append(content);
  wrap.append(el("dt", null, label), dd);
  return wrap;
}

// ---------------------------------------------------------------------------------- tag cards

function tagCard(repo, tag, headingLevel) {
  const card = el("li", "tag");
  card.dataset.tag = tag;
  const head = el("div", "tag-head");
  const name = el(`h${headingLevel}`, "tag-name", tag);
  name.tabIndex = -1;  // "Show more tags" moves the focus to the first new card
  head.append(name, el("span", "kind", ""));
  const facts = el("dl", "facts");
  const line = `docker pull ${location.host}/${repo}:${tag}`;
  card.append(head, facts, pullLine(line, `docker pull ${repo}:${tag}`));
  card.classList.add("pending");
  card.setAttribute("aria-busy", "true");
  return card;
}

function fillCard(card, repo, tag, info) {
  card.classList.remove("pending");
  card.removeAttribute("aria-busy");
  const kind = card.querySelector(".kind");
  const facts = card.querySelector(".facts");
  facts.replaceChildren();
  if (info.kind === "index") {
    kind.textContent = `multi-platform · ${plural(info.platforms.length, "platform", "platforms")}`;
  } else {
    kind.textContent = info.artifact ? `artifact · ${info.artifact}` : info.platform;
    facts.append(fact("Size", "size", document.createTextNode(humanSize(info.size))));
  }
  facts.append(fact("Built", "created", timeNode(info.created)));
  const digest = el("span", "digest-value");
  const code = el("code", "digest", shortDigest(info.digest));
  code.title = info.digest || "";
  digest.append(code);
  if (info.digest) digest.append(" ", copyButton(info.digest, `digest of ${repo}:${tag}`, "Copy digest"));
  facts.append(fact("Digest", "digest-fact", digest));
  if (info.kind === "index") card.append(platformTable(repo, tag, info));
  if (info.digest) {
    const pinned = el("details", "pinned");
    pinned.append(el("summary", null, "Pull by digest"),
      pullLine(`docker pull ${location.host}/${repo}@${info.digest}`, `pinned docker pull ${repo}@digest`, "pinned-command"));
    card.append(pinned);
  }
}

function platformTable(repo, tag, info) {
  const table = el("table", "platforms");
  table.append(el("caption", null, `Platforms of ${repo}:${tag}`));
  const head = el("tr");
  for (const h of ["Platform", "Size", "Built", "Digest"]) {
    const th = el("th", h === "Digest" ? "pdigest" : null, h);
    th.scope = "col";
    head.append(th);
  }
  table.createTHead().append(head);
  const body = table.createTBody();
  for (const p of info.platforms) {
    const row = el("tr", "platform");
    const name = el("th", "platform-name", p.platform || "?");
    name.scope = "row";
    const created = el("td", "created");
    created.append(timeNode(p.created));
    const digest = el("td", "pdigest");
    digest.append(el("code", null, p.digest || "?"));
    if (p.digest) digest.append(" ", copyButton(p.digest, `digest of ${repo}:${tag} for ${p.platform || "?"}`));
    row.append(name, el("td", "size", humanSize(p.size)), created, digest);
    body.append(row);
  }
  if (info.attestations) {
    const row = el("tr", "attestation");
    const cell = el("td", null, `+ ${plural(info.attestations, "attestation", "attestations")} (build provenance)`);
    cell.colSpan = 4;
    row.append(cell);
    body.append(row);
  }
  return table;
}

// One tag as a row of the compact table: the same facts as a card, on one line.
function tagRow(repo, tag) {
  const tr = el("tr", "tag pending");
  tr.dataset.tag = tag;
  tr.dataset.view = "row";
  const name = el("th", "tag-name", tag);
  name.scope = "row";
  name.tabIndex = -1;  // "Show more tags" moves the focus to the first new row
  const pull = el("td", "pull-cell");
  pull.append(copyButton(`docker pull ${location.host}/${repo}:${tag}`, `docker pull ${repo}:${tag}`, "Copy pull"));
  tr.append(name, el("td", "kind", ""), el("td", "size", ""), el("td", "created", ""), el("td", "digest-cell", ""), pull);
  tr.setAttribute("aria-busy", "true");
  return tr;
}

function fillRow(tr, repo, tag, info) {
  tr.classList.remove("pending");
  tr.removeAttribute("aria-busy");
  tr.querySelector(".kind").textContent = info.kind === "index"
    ? `multi-platform · ${plural(info.platforms.length, "platform", "platforms")}`
    : info.artifact ? `artifact · ${info.artifact}` : info.platform;
  const size = info.kind === "index" ? null : info.size;
  tr.querySelector(".size").textContent = info.kind === "index" ? "" : humanSize(size);
  tr.querySelector(".created").replaceChildren(timeNode(info.created));
  const cell = tr.querySelector(".digest-cell");
  const code = el("code", "digest", shortDigest(info.digest));
  code.title = info.digest || "";
  cell.replaceChildren(code);
  if (info.digest) cell.append(" ", copyButton(info.digest, `digest of ${repo}:${tag}`, "Copy digest"));
}

function tagTable(repo, rowsShown) {
  const table = el("table", "tag-table");
  table.append(el("caption", "sr-only", `Tags of ${repo}`));
  const head = el("tr");
  for (const h of ["Tag", "Platform", "Size", "Built", "Digest", "Pull"]) {
    const th = el("th", null, h);
    th.scope = "col";
    head.append(th);
  }
  table.createTHead().append(head);
  table.createTBody().append(...rowsShown);
  return table;
}

// Called with (card or row, repo, tag, details) once a tag's details are on it (manage.js adds
// its delete buttons this way).
const cardExtras = [];

const visible = new WeakSet();  // cards and rows in (or near) the viewport

const cardObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const card = entry.target;
    if (entry.isIntersecting) visible.add(card); else visible.delete(card);
    if (entry.isIntersecting && card.classList.contains("pending") && !card.dataset.asked) loadCard(card);
  }
}, { rootMargin: "300px 0px" });

function loadCard(card) {
  const { repo, tag } = card.dataset;
  card.dataset.asked = "1";
  describe(repo, tag, () => visible.has(card) && card.isConnected).then((info) => {
    (card.dataset.view === "row" ? fillRow : fillCard)(card, repo, tag, info);
    for (const extra of cardExtras) extra(card, repo, tag, info);
    noteDate(repo, tag, info.created);
  }, (e) => {
    delete card.dataset.asked;
    if (e instanceof Skipped) return;  // scrolled away; asked again when it comes back
    card.classList.remove("pending");
    card.removeAttribute("aria-busy");
    card.querySelector(".kind").textContent = `could not read the manifest (${e.message})`;
  });
}

// A list of tag cards for one repository, in the chosen order, TAGS_CHUNK at a time.
class TagList {
  constructor(repo, container, headingLevel) {
    this.repo = repo;
    this.container = container;
    this.headingLevel = headingLevel;
    this.cards = new Map();
    this.shown = TAGS_CHUNK;
    this.tags = null;
    this.filter = "";
  }

  setTags(tags) { this.tags = tags; this.render(); }

  setFilter(filter) {
    if (filter === this.filter) return;
    this.filter = filter;
    this.shown = TAGS_CHUNK;
    this.render();
  }

  // Cards show everything at once; a long list reads better as a table of one line per tag.
  view() {
    const chosen = currentView();
    if (chosen !== "auto") return chosen;
    return this.tags && this.tags.length > TABLE_FROM ? "table" : "cards";
  }

  card(tag) {
    const view = this.view();
    const key = `${view}:${tag}`;
    let card = this.cards.get(key);
    if (!card) {
      card = view === "table" ? tagRow(this.repo, tag) : tagCard(this.repo, tag, this.headingLevel);
      card.dataset.repo = this.repo;
      this.cards.set(key, card);
      cardObserver.observe(card);
    }
    return card;
  }

  render() {
    if (this.tags === null) return;
    const order = currentSort();
    const f = this.filter.toLowerCase();
    const tags = sortTags(this.tags.filter((t) => !f || t.toLowerCase().includes(f)), order, this.repo);
    const shown = tags.slice(0, this.shown).map((t) => this.card(t));
    let list;
    if (this.view() === "table") list = tagTable(this.repo, shown);
    else { list = el("ul", "tags"); list.append(...shown); }
    const parts = [list];
    if (!this.tags.length) parts.push(el("p", "empty", "No tags: every image here has been deleted."));
    else if (!tags.length) parts.push(el("p", "empty", `No tag matches “${this.filter}”.`));
    if (tags.length > this.shown) {
      const more = el("button", "show-more", `Show ${plural(Math.min(TAGS_CHUNK, tags.length - this.shown), "more tag", "more tags")} of ${counted.format(tags.length - this.shown)}`);
      more.type = "button";
      more.addEventListener("click", () => {
        this.shown += TAGS_CHUNK;
        this.render();
        const next = this.container.querySelectorAll(".tag")[this.shown - TAGS_CHUNK];
        if (next) next.querySelector(".tag-name").focus();
      });
      parts.push(more);
    }
    if (order === "built") parts.unshift(this.builtNote(tags));
    if (this.controls) parts.unshift(this.controls);
    this.container.replaceChildren(...parts);
  }

  // Sorting by build date needs every tag's config: read them all, then sort once more.
  builtNote(tags) {
    const note = el("p", "note");
    const dates = builtDates(this.repo);
    const missing = tags.filter((t) => !dates.has(t));
    if (!missing.length) { note.hidden = true; return note; }
    note.textContent = `Reading build dates: ${counted.format(tags.length - missing.length)} of ${counted.format(tags.length)}…`;
    if (!this.readingAll) {
      // An unreadable tag counts as read (no date, sorted last), or this would never end.
      this.readingAll = Promise.allSettled(missing.map((t) => describe(this.repo, t).then(
        (info) => noteDate(this.repo, t, info.created, true), () => noteDate(this.repo, t, null, true),
      ))).then(() => { this.readingAll = null; if (currentSort() === "built") this.render(); });
    }
    return note;
  }
}

function noteDate(repo, tag, created, quiet) {
  if (!knownDates.has(repo)) knownDates.set(repo, new Map());
  knownDates.get(repo).set(tag, created || "");
  if (!quiet && currentSort() === "built") scheduleResort();
}

let resortTimer = null;
function scheduleResort() {
  if (resortTimer) return;
  resortTimer = setTimeout(() => { resortTimer = null; for (const l of liveTagLists()) l.render(); }, 300);
}

// ---------------------------------------------------------------------------------- list view

const state = { query: "", shown: ROWS_CHUNK, matches: [], firstPaint: false };
const rows = new Map();     // repo -> row element
// Names the catalog still lists but that have no tag left (what deleting every tag leaves):
// hidden from the list once their row has read that, and counted in the status line.
const emptyRepos = new Set();
const openLists = new Map(); // repo -> TagList of expanded rows
let repoPage = null;         // { repo, list } while a repository page is open

function splitQuery(q) {
  const i = q.indexOf(":");
  return i < 0 ? [q.trim().toLowerCase(), ""] : [q.slice(0, i).trim().toLowerCase(), q.slice(i + 1).trim()];
}

function row(repo) {
  let li = rows.get(repo);
  if (li) return li;
  li = el("li", "repo");
  li.dataset.repo = repo;
  const head = el("div", "repo-head");
  const h2 = el("h2", "repo-title");
  const link = el("a", "repo-name", repo);
  link.href = `#/repo/${repo}`;
  h2.append(link);
  const summary = el("span", "summary", "");
  const id = `tags-${rows.size}`;
  const toggle = el("button", "toggle", "Show tags");
  toggle.type = "button";
  toggle.setAttribute("aria-expanded", "false");
  toggle.setAttribute("aria-controls", id);
  toggle.setAttribute("aria-label", `Show tags of ${repo}`);
  const body = el("div", "repo-body");
  body.id = id;
  body.hidden = true;
  toggle.addEventListener("click", () => setExpanded(li, body.hidden));
  head.append(h2, summary, toggle);
  li.append(head, body);
  rows.set(repo, li);
  rowObserver.observe(li);
  return li;
}

function setExpanded(li, open) {
  const repo = li.dataset.repo;
  const body = li.querySelector(".repo-body");
  const toggle = li.querySelector(".toggle");
  body.hidden = !open;
  toggle.setAttribute("aria-expanded", String(open));
  toggle.textContent = open ? "Hide tags" : "Show tags";
  toggle.setAttribute("aria-label", `${open ? "Hide" : "Show"} tags of ${repo}`);
  li.classList.toggle("open", open);
  if (!open) { openLists.delete(repo); return; }
  const list = new TagList(repo, body, 3);
  list.controls = tagControls();
  list.filter = splitQuery(state.query)[1];
  openLists.set(repo, list);
  body.replaceChildren(el("p", "note", "Reading tags…"));
  loadTags(repo).then((tags) => { if (openLists.get(repo) === list) list.setTags(tags); summarize(li, tags); },
    (e) => body.replaceChildren(el("p", "error", `Could not read the tags: ${e.message}`)));
}

function summarize(li, tags) {
  const summary = li.querySelector(".summary");
  li.classList.toggle("empty-repo", !tags.length);
  if (!tags.length) {
    summary.textContent = "no tags";
    if (!emptyRepos.has(li.dataset.repo) && !openLists.has(li.dataset.repo)) {
      emptyRepos.add(li.dataset.repo);
      scheduleRefresh();
    }
    return;
  }
  const top = sortTags(tags, "version-desc");
  const shown = top.slice(0, 3).join(", ");
  summary.textContent = `${plural(tags.length, "tag", "tags")}: ${shown}${tags.length > 3 ? ", …" : ""}`;
}

const rowObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const li = entry.target;
    if (entry.isIntersecting) visible.add(li); else visible.delete(li);
    if (!entry.isIntersecting || li.dataset.summarized) continue;
    li.dataset.summarized = "1";
    li.querySelector(".summary").textContent = "…";
    const repo = li.dataset.repo;
    loadTags(repo, () => visible.has(li) && li.isConnected).then((tags) => summarize(li, tags), (e) => {
      delete li.dataset.summarized;
      li.querySelector(".summary").textContent = e instanceof Skipped ? "" : `could not read the tags (${e.message})`;
    });
  }
}, { rootMargin: "200px 0px" });

let refreshTimer = null;
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; if (!repoPage) { refreshList(); fill(); } }, 100);
}

function refreshList() {
  if (catalogIndex.on) { renderIndexList(); return; }
  const [repoPart, tagPart] = splitQuery(state.query);
  const listed = emptyRepos.size ? catalog.names.filter((n) => !emptyRepos.has(n)) : catalog.names;
  state.matches = repoPart ? listed.filter((n) => n.toLowerCase().includes(repoPart)) : listed;
  const list = document.getElementById("repos");
  const wanted = state.matches.slice(0, state.shown).map(row);
  showRows(list, wanted);
  for (const l of openLists.values()) l.setFilter(tagPart);
  updateStatus();
  markFirstPaint(list);
}

// Rows are kept (with what they loaded) and only re-ordered; appending is the common case.
function showRows(list, wanted) {
  const current = list.children;
  let same = current.length <= wanted.length;
  for (let i = 0; same && i < current.length; i++) same = current[i] === wanted[i];
  if (same) list.append(...wanted.slice(current.length));
  else list.replaceChildren(...wanted);
}

function markFirstPaint(list) {
  if (state.firstPaint || !list.children.length) return;
  state.firstPaint = true;
  performance.mark("acmebox:repositories-visible");  // the tests count requests before it
  if (catalogIndex.on) loadStorage();
}

function updateStatus() {
  if (repoPage) return;
  if (catalogIndex.on) { indexStatus(); return; }
  const status = document.getElementById("status");
  const more = document.getElementById("more");
  const total = catalog.names.length;
  const [repoPart] = splitQuery(state.query);
  let text;
  if (catalog.error && !total) text = `Could not read the registry: ${catalog.error.message}`;
  else if (!total && !catalog.done) text = "Loading…";
  else if (!total) text = "No repositories yet.";
  else if (!repoPart) {
    text = catalog.done ? plural(total, "repository", "repositories")
      : `${plural(total, "repository", "repositories")} so far; more load as you scroll`;
  } else {
    const m = state.matches.length;
    text = catalog.done
      ? `${counted.format(m)} of ${plural(total, "repository", "repositories")} match “${repoPart}”`
      : `${counted.format(m)} of the first ${plural(total, "repository", "repositories")} match “${repoPart}”; reading more…`;
  }
  const hidden = repoPart ? [...emptyRepos].filter((n) => n.toLowerCase().includes(repoPart)).length : emptyRepos.size;
  if (hidden) text += ` · ${plural(hidden, "repository", "repositories")} without tags hidden`;
  if (catalog.error && total) text += ` (stopped: ${catalog.error.message})`;
  status.textContent = text;
  const rest = state.matches.length - Math.min(state.shown, state.matches.length);
  more.hidden = catalog.done && rest <= 0;
  more.textContent = rest > 0 ? `${plural(rest, "more repository", "more repositories")} below…` : "Reading more of the catalog…";
}

function sentinelInView() {
  const more = document.getElementById("more");
  if (more.hidden || repoPage) return false;
  return more.getBoundingClientRect().top < innerHeight + 400;
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
let filling = false;

// Adds rows while the end of the list is in view: first from what was read, then from the
// next catalog page. A search that matches little keeps reading until the catalog ends.
async function fill() {
  if (catalogIndex.on !== false) {  // the index, or its first answer still awaited: not the catalog
    if (catalogIndex.on) await indexFill();
    return;
  }
  if (filling) return;
  filling = true;
  try {
    while (sentinelInView()) {
      if (state.matches.length > state.shown) state.shown += ROWS_CHUNK;
      else if (!catalog.done) await loadCatalogPage();
      else break;
      refreshList();
      await nextFrame();
    }
  } finally {
    filling = false;
    updateStatus();
  }
}

const moreObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) fill();
}, { rootMargin: "400px 0px" });

// ---------------------------------------------------------------------------------- catalog index

// acmebox's catalog index (/ui-index/, kept current by the registry's notifications), where the
// deployment has it: search over every repository in one request, namespaces, order by last
// push, and each row's tag count, size and highest tags at once. Where it answers anything but
// 200 (an older deployment: 404; being built: 503) the page reads the registry as above. It is
// only a list: a repository's tags, manifests and configs still come from the registry.
const INDEX_PAGE = 100;
const REPO_SORTS = ["name", "push"];
const catalogIndex = {
  on: null,          // null: not asked yet; then true or false for the life of the page
  sort: "name", group: false,
  rows: [], total: 0, built: null, next: 0, loading: null, seq: 0,
  groups: null,      // [{ namespace, repositories, open, rows, loading }] when grouped
  storage: undefined, // /ui-index/storage once asked (after the first rows): null where not measured
};

// The registry's storage use, read once after the first rows are drawn (so it costs the first
// paint nothing); acmebox answers it where it watches the storage (--registry-storage).
function loadStorage() {
  if (catalogIndex.storage !== undefined) return;
  catalogIndex.storage = null;
  indexGet("storage").then((s) => { catalogIndex.storage = s; if (!repoPage) updateStatus(); }, () => {});
}

function storageText(s) {
  const pct = s.filesystem_size ? ` (${Math.round(100 * (1 - s.filesystem_free / s.filesystem_size))}% of its disk in use)` : "";
  return `${humanSize(s.used_bytes)} stored${pct}`;
}

async function indexGet(path) {
  const r = await fetch(`/ui-index/${path}`);
  if (!r.ok) throw new HttpError(`/ui-index/${path}`, r.status, "index");
  return r.json();
}

function indexQuery(extra) {
  const [repoPart] = splitQuery(state.query);
  const q = new URLSearchParams({ q: repoPart, sort: catalogIndex.sort, n: String(INDEX_PAGE), ...extra });
  return `repositories?${q}`;
}

// Reads the next page of the flat list (from the start with `reset`). Resolves to false when the
// index cannot be used at all.
function loadIndexPage(reset) {
  const idx = catalogIndex;
  if (reset) { idx.seq++; idx.rows = []; idx.next = 0; idx.total = 0; idx.loading = null; idx.groups = null; }
  if (idx.loading) return idx.loading;
  const seq = idx.seq;
  idx.loading = (async () => {
    try {
      if (idx.group) {
        const [repoPart] = splitQuery(state.query);
        const body = await indexGet(`namespaces?${new URLSearchParams({ q: repoPart })}`);
        if (seq !== idx.seq) return true;
        idx.groups = body.namespaces.map((g) => ({ ...g, open: false, rows: [], loading: null }));
        idx.total = idx.groups.reduce((sum, g) => sum + g.repositories, 0);
        if (idx.groups.length === 1) await openGroup(idx.groups[0], true);
      } else {
        const body = await indexGet(indexQuery({ offset: String(idx.next) }));
        if (seq !== idx.seq) return true;
        idx.rows.push(...body.repositories);
        idx.total = body.total;
        idx.built = body.built;
        idx.next += body.repositories.length;
      }
      idx.on = true;
      return true;
    } catch (e) {
      if (idx.on === null) { idx.on = false; return false; }
      catalog.error = e;
      return true;
    } finally {
      if (seq === idx.seq) idx.loading = null;
    }
  })();
  return idx.loading;
}

async function openGroup(group, open) {
  group.open = open;
  if (open && !group.rows.length) await moreOfGroup(group);
  refreshList();
}

async function moreOfGroup(group) {
  if (group.loading) return group.loading;
  const seq = catalogIndex.seq;
  group.loading = indexGet(indexQuery({ namespace: group.namespace, offset: String(group.rows.length) }))
    .then((body) => { if (seq === catalogIndex.seq) group.rows.push(...body.repositories); })
    .finally(() => { group.loading = null; });
  return group.loading;
}

function summarizeFromIndex(li, info) {
  li.dataset.summarized = "1";  // the row observer reads nothing for it
  const summary = li.querySelector(".summary");
  const shown = info.top_tags.join(", ");
  const parts = [`${plural(info.tags, "tag", "tags")}: ${shown}${info.tags > info.top_tags.length ? ", …" : ""}`,
    humanSize(info.size)];
  if (info.last_push) parts.push(`pushed ${ago(new Date(info.last_push * 1000))}`);
  summary.textContent = parts.join(" · ");
  if (info.last_push) summary.title = `last push ${absolute.format(new Date(info.last_push * 1000))}`;
}

function indexRow(info) {
  const li = row(info.name);
  summarizeFromIndex(li, info);
  return li;
}

function groupItem(group) {
  const li = el("li", "ns");
  const id = `ns-${group.namespace || "top"}`.replace(/[^a-z0-9_-]/gi, "-");
  const toggle = el("button", "ns-toggle", `${group.namespace || "(top level)"}`);
  toggle.type = "button";
  toggle.setAttribute("aria-label", group.namespace || "(top level)");  // without the CSS triangle
  toggle.setAttribute("aria-expanded", String(group.open));
  toggle.setAttribute("aria-controls", id);
  const count = el("span", "summary", plural(group.repositories, "repository", "repositories"));
  toggle.addEventListener("click", () => openGroup(group, !group.open));
  const head = el("div", "ns-head");
  head.append(toggle, count);
  const list = el("ul", "ns-repos");
  list.id = id;
  list.hidden = !group.open;
  if (group.open) {
    list.append(...group.rows.map(indexRow));
    const rest = group.repositories - group.rows.length;
    if (rest > 0) {
      const more = el("button", "ns-more", `Show ${plural(Math.min(rest, INDEX_PAGE), "more", "more")} of ${plural(rest, "repository", "repositories")} left`);
      more.type = "button";
      more.addEventListener("click", () => moreOfGroup(group).then(refreshList));
      const item = el("li", "ns-more-item");
      item.append(more);
      list.append(item);
    }
  }
  li.append(head, list);
  return li;
}

function renderIndexList() {
  const idx = catalogIndex;
  const list = document.getElementById("repos");
  const [, tagPart] = splitQuery(state.query);
  if (idx.group) list.replaceChildren(...(idx.groups || []).map(groupItem));
  else showRows(list, idx.rows.map(indexRow));
  for (const l of openLists.values()) l.setFilter(tagPart);
  updateStatus();
  markFirstPaint(list);
}

function indexStatus() {
  const idx = catalogIndex;
  const [repoPart] = splitQuery(state.query);
  const shown = idx.group ? (idx.groups || []).length : idx.rows.length;
  let text;
  if (idx.loading && !shown) text = "Searching…";
  else if (!idx.total) text = repoPart ? `No repository matches “${repoPart}”` : "No repositories yet.";
  else if (repoPart) text = `${plural(idx.total, "repository matches", "repositories match")} “${repoPart}”`;
  else text = plural(idx.total, "repository", "repositories");
  if (idx.group && idx.groups) text += ` in ${plural(idx.groups.length, "namespace", "namespaces")}`;
  if (!repoPart && idx.storage) text += ` · ${storageText(idx.storage)}`;
  if (catalog.error) text += ` (stopped: ${catalog.error.message})`;
  document.getElementById("status").textContent = text;
  const more = document.getElementById("more");
  const rest = idx.total - idx.rows.length;
  more.hidden = idx.group || rest <= 0;
  more.textContent = `${plural(rest, "more repository", "more repositories")} below…`;
}

async function indexFill() {
  if (filling) return;
  filling = true;
  try {
    while (sentinelInView() && catalogIndex.rows.length < catalogIndex.total) {
      const before = catalogIndex.rows.length;
      await loadIndexPage(false);
      renderIndexList();
      if (catalogIndex.rows.length === before) break;
      await nextFrame();
    }
  } finally {
    filling = false;
  }
}

let searchTimer = null;
function indexSearch() {
  clearTimeout(searchTimer);
  // One request per pause in typing, not per key.
  searchTimer = setTimeout(() => loadIndexPage(true).then(() => { renderIndexList(); indexFill(); }), 60);
}

function repoControls() {
  const sort = el("label", "repo-sort");
  const select = el("select");
  select.id = "repo-sort";
  for (const [value, text] of [["name", "Name"], ["push", "Last push, newest first"]]) {
    const option = el("option", null, text);
    option.value = value;
    select.append(option);
  }
  select.value = catalogIndex.sort;
  select.addEventListener("change", () => {
    catalogIndex.sort = select.value;
    try { localStorage.setItem("acmebox-repo-sort", select.value); } catch (e) { /* private mode */ }
    indexSearch();
  });
  sort.append(el("span", "label", "Repositories by"), select);
  const group = el("label", "repo-group");
  const box = el("input");
  box.type = "checkbox";
  box.id = "repo-group";
  box.checked = catalogIndex.group;
  box.addEventListener("change", () => {
    catalogIndex.group = box.checked;
    try { localStorage.setItem("acmebox-repo-group", box.checked ? "1" : ""); } catch (e) { /* private mode */ }
    indexSearch();
  });
  group.append(box, el("span", null, "Group by namespace"));
  document.querySelector(".controls").insertBefore(sort, document.getElementById("theme"));
  document.querySelector(".controls").insertBefore(group, document.getElementById("theme"));
}

// The list through the index; falls back to the registry's catalog if the index does not answer.
function indexShowList(fallback) {
  if (catalogIndex.on === null) {
    if (REPO_SORTS.includes(stored("acmebox-repo-sort"))) catalogIndex.sort = stored("acmebox-repo-sort");
    catalogIndex.group = stored("acmebox-repo-group") === "1";
    updateStatus();
    loadIndexPage(true).then((ok) => {
      if (!ok) { fallback(); return; }
      repoControls();
      renderIndexList();
      indexFill();
      if (catalogIndex.query !== state.query) { catalogIndex.query = state.query; indexSearch(); }  // typed meanwhile
    });
    return;
  }
  renderIndexList();
  indexFill();
}

// ---------------------------------------------------------------------------------- repository page

function liveTagLists() {
  const lists = [...openLists.values()];
  if (repoPage) lists.push(repoPage.list);
  return lists;
}

function showRepo(repo) {
  const view = document.getElementById("repo-view");
  const listView = document.getElementById("list-view");
  if (!repoPage) state.scroll = scrollY;
  listView.hidden = true;
  view.hidden = false;
  const back = el("a", "back", "← All repositories");
  back.href = state.query ? `#/?q=${encodeURIComponent(state.query)}` : "#/";
  const title = el("h2", "repo-page-title", repo);
  title.tabIndex = -1;
  const pull = el("div", "repo-pull");  // filled once the tags show there is a :latest
  const filterLabel = el("label", "tag-filter");
  const filter = el("input");
  filter.type = "search";
  filter.id = "tag-filter";
  filter.autocomplete = "off";
  filter.spellcheck = false;
  filter.placeholder = "type part of a tag name";
  filterLabel.append(el("span", "label", "Filter tags"), filter);
  const toolbar = el("div", "repo-toolbar");
  toolbar.append(filterLabel, tagControls());
  const body = el("div", "repo-body");
  body.append(el("p", "note", "Reading tags…"));
  const count = el("p", "count", "");
  view.replaceChildren(back, title, count, pull, toolbar, body);
  const list = new TagList(repo, body, 3);
  repoPage = { repo, list };
  filter.addEventListener("input", () => list.setFilter(filter.value.trim()));
  const status = document.getElementById("status");
  status.classList.add("sr-only");  // the page says it under the title; screen readers still hear it
  status.textContent = `Repository ${repo}`;
  document.getElementById("more").hidden = true;
  document.title = `${repo} · Registry`;
  title.focus();
  loadTags(repo).then((tags) => {
    if (repoPage && repoPage.list === list) {
      if (tags.unknown) {
        body.replaceChildren(el("p", "error", `There is no repository named ${repo} here (or all its tags were deleted).`));
        status.textContent = `No repository named ${repo}`;
        return;
      }
      list.setTags(tags);
      if (tags.includes("latest")) pull.append(pullLine(`docker pull ${location.host}/${repo}`, `docker pull ${repo}`));
      count.textContent = plural(tags.length, "tag", "tags");
      status.textContent = `${repo}: ${count.textContent}`;
    }
  }, (e) => {
    if (!repoPage || repoPage.list !== list) return;
    body.replaceChildren(el("p", "error", `Could not read the tags: ${e.message}`));
    status.textContent = `Could not read ${repo}`;
  });
}

function showList(query) {
  const leaving = repoPage;
  repoPage = null;
  document.title = "Registry";
  document.getElementById("repo-view").hidden = true;
  document.getElementById("status").classList.remove("sr-only");
  document.getElementById("list-view").hidden = false;
  const search = document.getElementById("search");
  if (query !== state.query) {
    state.query = query;
    state.shown = ROWS_CHUNK;
    search.value = query;
  }
  const fromRegistry = () => {
    if (!catalog.names.length && !catalog.done) {
      updateStatus();
      loadCatalogPage().then(() => { refreshList(); fill(); });
    } else {
      refreshList();
      fill();
    }
  };
  if (catalogIndex.on === false) fromRegistry();
  else if (catalogIndex.on === null || query !== catalogIndex.query) {
    catalogIndex.query = query;
    if (catalogIndex.on) indexSearch(); else indexShowList(fromRegistry);
  } else indexShowList(fromRegistry);
  if (leaving) {
    scrollTo(0, state.scroll || 0);
    const link = rows.get(leaving.repo);
    if (link) link.querySelector(".repo-name").focus({ preventScroll: true });
  }
}

// Routes: #/  #/?q=text  #/repo/<name>
function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, ""));
  if (hash && !hash.startsWith("/")) return;  // an in-page anchor, not a route
  const repo = hash.match(/^\/repo\/(.+)$/);
  if (repo) { showRepo(repo[1].replace(/\/+$/, "")); return; }
  const q = location.hash.match(/[?&]q=([^&]*)/);
  showList(q ? decodeURIComponent(q[1].replace(/\+/g, " ")) : "");
}

// ---------------------------------------------------------------------------------- settings

// How tags are shown, chosen beside the tags (not on the repository list, where "order" would
// read as sorting the repositories) and kept for the next visit.
const settings = { order: SORTS[0], view: VIEWS[0] };

function currentSort() { return settings.order; }
function currentView() { return settings.view; }

function choose(key, value) {
  settings[key] = value;
  try { localStorage.setItem(`acmebox-${key === "order" ? "sort" : "view"}`, value); } catch (e) { /* private mode */ }
  for (const select of document.querySelectorAll(`select[data-setting="${key}"]`)) select.value = value;
  for (const l of liveTagLists()) l.render();
}

function settingSelect(key, label, options) {
  const wrap = el("label", `tag-setting ${key}`);
  const select = el("select");
  select.dataset.setting = key;
  for (const [value, text] of options) {
    const option = el("option", null, text);
    option.value = value;
    select.append(option);
  }
  select.value = settings[key];
  select.addEventListener("change", () => choose(key, select.value));
  wrap.append(el("span", "label", label), select);
  return wrap;
}

function tagControls() {
  const box = el("div", "tag-controls");
  box.append(
    settingSelect("order", "Tag order", [["version-desc", "Version, highest first"], ["version", "Version, lowest first"],
      ["built", "Built, newest first"]]),
    settingSelect("view", "Show tags as", [["auto", `Cards, a table above ${TABLE_FROM}`], ["cards", "Cards"],
      ["table", "Compact table"]]),
  );
  return box;
}

function setTheme(theme) {
  const t = THEMES.includes(theme) ? theme : "auto";
  document.documentElement.dataset.theme = t;
  const button = document.getElementById("theme");
  button.textContent = `Theme: ${t}`;
  button.setAttribute("aria-label", `Colour theme: ${t === "auto" ? "follows the system" : t}. Change`);
  try { localStorage.setItem("acmebox-theme", t); } catch (e) { /* private mode */ }
}

function stored(key) {
  try { return localStorage.getItem(key); } catch (e) { return null; }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const node of document.querySelectorAll("#host, .host")) node.textContent = location.host;
  setTheme(stored("acmebox-theme"));
  document.getElementById("theme").addEventListener("click", () => {
    setTheme(THEMES[(THEMES.indexOf(document.documentElement.dataset.theme) + 1) % THEMES.length]);
  });
  if (SORTS.includes(stored("acmebox-sort"))) settings.order = stored("acmebox-sort");
  if (VIEWS.includes(stored("acmebox-view"))) settings.view = stored("acmebox-view");
  const search = document.getElementById("search");
  search.addEventListener("input", () => {
    state.query = search.value;
    state.shown = ROWS_CHUNK;
    const hash = state.query ? `#/?q=${encodeURIComponent(state.query)}` : "#/";
    if (repoPage) { location.hash = hash; return; }  // typing on a repository page goes back to the list
    history.replaceState(null, "", hash);
    if (catalogIndex.on) { catalogIndex.query = state.query; indexSearch(); return; }
    if (catalogIndex.on === null) return;  // the first answer will show it
    if (!catalog.names.length && !catalog.done) return;  // the first page will show it
    refreshList();
    fill();
  });
  search.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && search.value) { search.value = ""; search.dispatchEvent(new Event("input")); }
  });
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); search.focus(); }
  });
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();  // "#main" would otherwise become the route
    document.getElementById("main").focus();
  });
  moreObserver.observe(document.getElementById("more"));
  addEventListener("hashchange", route);
  route();
});
