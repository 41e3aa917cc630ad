// The curation service's page: plain JavaScript, no build step. Every value from the API is put into the page
// as text (never as HTML): captions, URIs and requesters come from the web.
"use strict";

const view = document.getElementById("view");
let token = localStorage.getItem("curation-token") || "";
let poller = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

async function json(path, options) { return (await api(path, options)).json(); }

// Images need the token too, so they are fetched and shown from blob URLs.
async function authImage(path, alt) {
  const image = el("img", { alt, loading: "lazy" });
  api(path).then((r) => r.blob()).then((blob) => { image.src = URL.createObjectURL(blob); }).catch(() => {});
  return image;
}

function table(rows, columns, onRow) {
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map(([, title]) => el("th", {}, title)))),
    el("tbody", {}, rows.map((row) => {
      const tr = el("tr", onRow ? { onclick: () => onRow(row), style: "cursor:pointer" } : {},
        columns.map(([key]) => el("td", {}, typeof key === "function" ? key(row) : (row[key] ?? ""))));
      return tr;
    })));
}

async function whoami() {
  const box = document.getElementById("whoami");
  if (!token) { box.textContent = "no token"; return; }
  try {
    const me = await json("/api/whoami");
    box.textContent = `${me.name} (${me.role})`;
    box.dataset.role = me.role;
  } catch (error) { box.textContent = error.message; }
}

document.getElementById("token").value = token;
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  localStorage.setItem("curation-token", token);
  whoami();
  route();
});

// --- runs ---------------------------------------------------------------------------------------------
function progressCell(job) {
  if (!job.progress) return job.status === "finished" ? "done" : "";
  return el("div", {}, job.progress.stages.map((stage) => {
    const share = stage.total ? Math.round(100 * stage.done / stage.total) : null;
    const eta = stage.eta_s ? `, ETA ${Math.round(stage.eta_s)} s` : "";
    const rate = stage.rate ? `, ${stage.rate} ${stage.unit}/s` : "";
    return el("div", { class: "stage" },
      `${stage.name}: ` + (share === null ? "working" : `${stage.done}/${stage.total} ${stage.unit}${rate}${eta}`),
      share === null ? null : el("div", { class: "bar" }, el("span", { style: `width:${share}%` })));
  }));
}

async function runsView() {
  const specs = await json("/api/specs").catch(() => []);
  const text = el("textarea", { id: "spec-text", rows: 14, placeholder: "name: mydata\nsources: ..." });
  const choice = el("select", { id: "spec-file" }, el("option", { value: "" }, "(choose a spec file)"),
    specs.map((name) => el("option", { value: name }, name)));
  choice.addEventListener("change", async () => {
    if (choice.value) text.value = await (await api(`/api/specs/${encodeURIComponent(choice.value)}`)).text();
  });
  const fresh = el("input", { type: "checkbox", id: "fresh" });
  const submit = el("button", { id: "submit-run", onclick: async () => {
    try {
      const job = await json("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ spec: text.value, fresh: fresh.checked }) });
      showError("");
      document.getElementById("submitted").textContent = `queued ${job.job_id}`;
      refresh();
    } catch (error) { showError(error.message); }
  } }, "Submit run");
  const checked = el("pre", { id: "check-result", hidden: "hidden" });
  const check = el("button", { id: "check-spec", onclick: async () => {
    try {
      const report = await json("/api/specs/check", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ spec: text.value }) });
      checked.textContent = [
        report.ok ? "a run could start" : `a run would fail: ${report.errors.length} error(s)`,
        ...report.errors.map((line) => `error: ${line}`), ...report.warnings.map((line) => `warning: ${line}`),
        "sources:", ...report.sources.map((source) => `  ${source.name} (${source.kind}): ${source.what}`),
        "stages:", ...report.stages.map((stage) => `  ${stage}`)].join("\n");
      showError("");
    } catch (error) { checked.textContent = error.message; }
    checked.hidden = false;
  } }, "Check");
  const jobsBox = el("div", { id: "jobs" });
  view.replaceChildren(
    el("section", {}, el("h2", {}, "Submit a run"), el("p", { class: "muted" },
      "A spec as YAML; relative paths resolve in the service's specs folder. Check shows what a run would read " +
      "and do, without running it."), choice, text,
      el("label", {}, fresh, " fresh (do not resume an unfinished run of this spec)"), " ", check, " ", submit,
      " ", el("span", { id: "submitted" }), checked),
    el("section", {}, el("h2", {}, "Jobs"), jobsBox),
    el("section", {}, el("h2", {}, "Log"), el("pre", { id: "log" }, "click a job")),
    el("section", {}, el("h2", {}, "All runs (from this page and from the CLI)"), el("div", { id: "runs" }),
      el("pre", { id: "rejects", hidden: "hidden" })));

  async function showRejects(run) {
    const detail = await json(`/api/runs/${encodeURIComponent(run.run_id)}`);
    const box = document.getElementById("rejects");
    const warnings = Object.values(detail.stats || {}).filter((stage) => stage && stage.warning)
      .map((stage) => `WARNING ${stage.warning}`);  // e.g. dedup chaining look-alikes into one huge group
    const rejects = detail.rejects.length ? detail.rejects.map((row) =>
      `${row.stage}\t${row.reason}\t${row.inputs}`).join("\n") : `${run.run_id}: nothing rejected`;
    box.textContent = [...warnings, rejects].join("\n");
    box.hidden = false;
  }

  async function showLog(job) {
    const log = await json(`/api/jobs/${job.job_id}/log`);
    document.getElementById("log").textContent = log.text || "(empty)";
  }

  async function refresh() {
    const jobs = await json("/api/jobs");
    jobsBox.replaceChildren(table(jobs, [
      ["job_id", "job"], ["kind", "kind"],
      [(job) => el("span", { class: `status-${job.status}`, "data-status": job.status }, job.status), "status"],
      [(job) => job.version ? el("a", { href: `#/version/${job.version}` }, job.version) : (job.error || ""), "result"],
      [progressCell, "progress"],
      [(job) => el("span", {},
        ["queued", "running"].includes(job.status) ? el("button", { onclick: async (event) => {
          event.stopPropagation();
          await json(`/api/jobs/${job.job_id}/cancel`, { method: "POST" }).catch((e) => showError(e.message));
        } }, "Cancel") : null,
        ["interrupted", "failed", "cancelled"].includes(job.status) ? el("button", { onclick: async (event) => {
          event.stopPropagation();
          await json(`/api/jobs/${job.job_id}/resume`, { method: "POST" }).catch((e) => showError(e.message));
        } }, "Resume") : null), ""],
    ], showLog));
  }
  await refresh();
  const runs = await json("/api/runs");
  document.getElementById("runs").replaceChildren(table(runs, [["run_id", "run"], ["status", "status"],
    [(run) => run.version ? el("a", { href: `#/version/${run.version}` }, run.version) : "", "version"],
    ["started_at", "started"], ["finished_at", "finished"]], showRejects));
  poller = setInterval(() => refresh().catch((error) => showError(error.message)), 1000);
}

// --- datasets -----------------------------------------------------------------------------------------
async function datasetsView() {
  const versions = await json("/api/versions");
  view.replaceChildren(el("section", {}, el("h2", {}, "Published versions"),
    table(versions, [
      [(row) => el("a", { href: `#/version/${row.ref}` }, row.ref), "version"], ["samples", "samples"],
      ["status", "status"], ["created_at", "created"], ["uri", "where"],
    ])));
}

async function versionView(ref) {
  const [version, audit] = await Promise.all([json(`/api/versions/${ref}`), json(`/api/audit/version/${ref}`)]);
  const searchable = version.lineage.includes("embed");  // its samples have vectors
  const counts = (object) => table(Object.entries(object).map(([key, value]) => ({ key, value })),
    [["key", ""], ["value", "samples"]]);
  const plots = el("div", { class: "plots" });
  for (const path of version.plots) plots.append(el("div", {}, el("div", { class: "muted" }, path),
    await authImage(`/api/versions/${ref}/files/${path}`, path)));
  view.replaceChildren(
    el("section", {}, el("h2", { id: "version-title" }, `${version.ref} `, el("span", { class: "muted" }, version.status)),
      el("p", {}, `${version.counts.samples} samples in ${version.counts.shards} shards; ${version.counts.inputs} inputs,`
        + ` ${version.counts.rejected_inputs} rejected. Parent: ${version.parent ? version.parent.ref : "none"}.`
        + ` Stages: ${version.lineage.join(" → ")}.`),
      el("p", {}, el("button", { id: "verify", onclick: async () => {
        const result = await json(`/api/versions/${ref}/verify`, { method: "POST" }).catch((e) => showError(e.message));
        if (result) document.getElementById("verified").textContent = result.ok ? `OK, ${result.files} files` :
          `FAILED: ${result.problems.join("; ")}`;
      } }, "Verify"), " ", el("span", { id: "verified" }), " ",
      el("a", { href: "#", onclick: async (event) => {
        event.preventDefault();
        const text = await (await api(`/api/versions/${ref}/statement?format=markdown`)).text();
        const box = document.getElementById("statement");
        box.textContent = text;
        box.hidden = false;
      } }, "data statement")),
      el("pre", { id: "statement", hidden: "hidden" })),
    el("section", {}, el("h2", {}, "Composition"),
      el("div", { style: "display:flex;gap:2em" },
        el("div", {}, el("h3", {}, "by part"), counts(audit.by_part)),
        el("div", {}, el("h3", {}, "by source"), counts(audit.by_source)),
        el("div", {}, el("h3", {}, "by licence"), counts(audit.by_license)))),
    version.plots.length ? el("section", {}, el("h2", {}, "Cluster balance"), plots) : "",
    searchable ? searchSection(ref) : "",
    el("section", {}, el("h2", {}, "Samples"), el("div", { id: "samples" })));
  await samplesBrowser(ref, document.getElementById("samples"), { offset: 0 }, searchable);
}

// Search by example: the version's own embedder ranks its samples against an uploaded image or a sample.
function searchSection(ref) {
  const file = el("input", { type: "file", id: "similar-image", accept: "image/*" });
  const submit = el("button", { id: "similar-submit", onclick: () => {
    if (!file.files.length) { showError("choose an image file first"); return; }
    const body = new FormData();
    body.append("image", file.files[0]);
    showSimilar(ref, `/api/versions/${ref}/similar`, { method: "POST", body });
  } }, "Find similar");
  const text = el("input", { id: "similar-text", size: 40, placeholder: "or a caption (CLIP-like embedders)" });
  const byText = el("button", { id: "similar-text-submit", onclick: () => showSimilar(ref,
    `/api/versions/${ref}/similar?text=${encodeURIComponent(text.value.trim())}`) }, "Search text");
  return el("section", {}, el("h2", {}, "Search by example"),
    el("p", { class: "muted" }, "The samples most like an image, by this version's embedder; " +
      "or press “similar” on a sample."), file, " ", submit, " ", text, " ", byText, el("div", { id: "similar" }));
}

async function showSimilar(ref, path, options) {
  const box = document.getElementById("similar");
  box.replaceChildren("searching…");
  try {
    const result = await json(path, options);
    const grid = el("div", { class: "grid" });
    for (const hit of result.neighbours) {
      grid.append(await sampleCard(ref, hit.image_id, `#${hit.rank} · ${hit.similarity.toFixed(3)}`,
        `${hit.part} · ${hit.source}`, { "data-rank": hit.rank }));
    }
    const query = result.query_text ? `“${result.query_text}”` : `${result.query_image_id.slice(0, 12)}…`;
    box.replaceChildren(el("p", { class: "muted" }, `${result.neighbours.length} nearest to ${query} by ` +
      result.model_id), grid);
    showError("");
  } catch (error) { box.replaceChildren(); showError(error.message); }
}

// A thumbnail that opens the image's provenance; `extra` may hold a "similar" button.
async function sampleCard(ref, imageId, title, subtitle, attrs = {}, extra = null) {
  return el("div", Object.assign({ class: "card", "data-image": imageId,
    onclick: () => { location.hash = `#/audit/${imageId}`; } }, attrs),
    await authImage(`/api/versions/${ref}/thumbnails/${imageId}`, title),
    el("div", {}, title), el("div", { class: "muted" }, subtitle), extra);
}

async function samplesBrowser(ref, box, filters, searchable) {
  const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== "" && v !== null));
  query.set("limit", 24);
  const page = await json(`/api/versions/${ref}/samples?${query}`);
  const select = (name, values) => {
    const node = el("select", { name, "data-filter": name }, el("option", { value: "" }, `any ${name}`),
      values.map((value) => el("option", { value, selected: filters[name] === value ? "selected" : null }, value)));
    node.addEventListener("change", () => samplesBrowser(ref, box, Object.assign({}, filters, { [name]: node.value,
      offset: 0 }), searchable));
    return el("label", {}, node);
  };
  const cluster = el("input", { name: "cluster", placeholder: "cluster path, e.g. 3/12", value: filters.cluster || "",
    size: 16 });
  cluster.addEventListener("change", () => samplesBrowser(ref, box, Object.assign({}, filters,
    { cluster: cluster.value.trim(), offset: 0 }), searchable));
  const grid = el("div", { class: "grid" });
  for (const sample of page.samples) {
    const similar = searchable ? el("button", { class: "similar", onclick: (event) => {
      event.stopPropagation();
      showSimilar(ref, `/api/versions/${ref}/similar?image_id=${sample.image_id}`);
    } }, "similar") : null;
    grid.append(await sampleCard(ref, sample.image_id, sample.caption || sample.image_id.slice(0, 12),
      `${sample.part} · ${sample.license || "unknown"}${sample.cluster ? " · " + sample.cluster : ""}`, {}, similar));
  }
  const offset = page.offset;
  const pager = el("div", {},
    el("button", { disabled: offset === 0 ? "disabled" : null, onclick: () => samplesBrowser(ref, box,
      Object.assign({}, filters, { offset: Math.max(0, offset - 24) }), searchable) }, "previous"),
    ` ${page.total ? offset + 1 : 0}–${Math.min(offset + 24, page.total)} of ${page.total} `,
    el("button", { id: "next-page", disabled: offset + 24 >= page.total ? "disabled" : null,
      onclick: () => samplesBrowser(ref, box, Object.assign({}, filters, { offset: offset + 24 }), searchable) },
      "next"));
  box.replaceChildren(el("div", { class: "filters" }, select("part", page.facets.part),
    select("source", page.facets.source), select("license", page.facets.license), cluster), pager, grid);
}

// --- opt-out ------------------------------------------------------------------------------------------
async function optoutView() {
  const policy = await json("/api/policy");
  const kind = el("select", { name: "kind", id: "optout-kind" },
    ["url", "url_prefix", "domain", "sha256", "image"].map((k) => el("option", { value: k }, k)));
  const form = el("form", { id: "optout-form" },
    el("p", {}, el("label", {}, "What to remove: ", kind), " ",
      el("input", { name: "value", id: "optout-value", size: 60, placeholder: "https://…, example.com or SHA-256" })),
    el("p", {}, el("label", {}, "or an image file: ", el("input", { type: "file", name: "image", id: "optout-image",
      accept: "image/*" }))),
    el("p", {}, el("input", { name: "requester", placeholder: "your name or e-mail", size: 30 }), " ",
      el("input", { name: "reason", placeholder: "reason (optional)", size: 40 })),
    el("button", { type: "submit", id: "optout-submit" }, "Submit opt-out request"), " ",
    el("span", { id: "optout-result" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (kind.value !== "image") data.delete("image");
    try {
      const created = await json("/api/optouts", { method: "POST", body: data });
      document.getElementById("optout-result").textContent = `request ${created.request_id}: ${created.status}`;
      showError("");
    } catch (error) { showError(error.message); }
  });
  const dataset = el("input", { id: "apply-name", placeholder: "dataset name", size: 20 });
  view.replaceChildren(
    el("section", {}, el("h2", {}, "Ask for an image to be removed"),
      el("p", { class: "muted" }, policy.public_optouts ? `Open to everyone (limit ${policy.public_optout_limit}` +
        ` per address); uploads up to ${Math.round(policy.max_upload_bytes / 1048576)} MiB.` :
        "Needs a token."), form),
    el("section", {}, el("h2", {}, "Apply opt-outs (curators)"),
      el("p", { class: "muted" }, "Publishes a child of the dataset's latest version without every image the " +
        "requests in force cover."), dataset, " ",
      el("button", { id: "apply-submit", onclick: async () => {
        try {
          const job = await json(`/api/datasets/${encodeURIComponent(dataset.value)}/apply-optouts`,
            { method: "POST" });
          document.getElementById("apply-result").textContent = `queued ${job.job_id}`;
          location.hash = "#/runs";
        } catch (error) { showError(error.message); }
      } }, "Apply"), " ", el("span", { id: "apply-result" })));
}

// --- audit --------------------------------------------------------------------------------------------
async function auditView(query) {
  const input = el("input", { id: "audit-query", size: 70, value: query || "", placeholder: "SHA-256 or source URI" });
  const result = el("div", { id: "audit-result" });
  const go = el("button", { onclick: () => { location.hash = `#/audit/${encodeURIComponent(input.value.trim())}`; } },
    "Look up");
  view.replaceChildren(el("section", {}, el("h2", {}, "Where did this image come from, where did it go?"),
    input, " ", go), result);
  if (!query) return;
  const report = await json(`/api/audit/image?q=${encodeURIComponent(query)}`);
  if (!report.found) { result.replaceChildren(el("section", {}, "not found")); return; }
  result.replaceChildren(
    el("section", { id: "provenance" }, el("h2", {}, "Provenance"), table(report.provenance, [
      ["source", "source"], ["uri", "uri"], ["redirected_to", "redirected to"], ["license", "licence"], ["attribution", "attribution"],
      ["run_id", "run"], ["seen_at", "seen"]])),
    el("section", {}, el("h2", {}, "Decisions"), table(report.decisions, [["run_id", "run"], ["stage", "stage"],
      ["status", "status"], ["reason", "reason"], ["detail", "detail"]])),
    el("section", {}, el("h2", {}, "Versions holding it"), table(report.versions, [
      [(row) => el("a", { href: `#/version/${row.ref}` }, row.ref), "version"], ["shard", "shard"], ["status", "status"]])),
    el("section", {}, el("h2", {}, "Removed by opt-out"), table(report.removed_from, [["ref", "version"],
      ["request_id", "request"], ["method", "method"]])));
}

// --- routing ------------------------------------------------------------------------------------------
async function route() {
  clearInterval(poller);
  showError("");
  const [, page, ...rest] = location.hash.split("/");
  const argument = decodeURIComponent(rest.join("/"));
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.id === `nav-${page}`);
  try {
    if (page === "datasets") await datasetsView();
    else if (page === "version") await versionView(argument);
    else if (page === "optout") await optoutView();
    else if (page === "audit") await auditView(argument);
    else await runsView();
  } catch (error) {
    showError(error.status === 401 ? `${error.message} — enter an API token above` : error.message);
  }
}

window.addEventListener("hashchange", route);
whoami();
route();
