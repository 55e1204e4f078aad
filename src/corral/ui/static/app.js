// corral's dashboard: the job list and a job's page, from the server's JSON API.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
let timer = null;
let follow = null;

function api(path, params = {}, method = "GET") {
  const query = new URLSearchParams({ ...params, token });
  return fetch(`${path}?${query}`, { method }).then((r) => {
    if (!r.ok) return r.json().then((e) => { throw new Error(e.error || r.statusText); });
    return r.json();
  });
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
  return td;
}

function when(t) { return t ? new Date(t * 1000).toLocaleString() : "-"; }
function took(job) {
  if (!job.started) return "-";
  const end = job.finished || Date.now() / 1000;
  return `${(end - job.started).toFixed(1)} s`;
}

function showList() {
  document.getElementById("list-view").hidden = false;
  document.getElementById("job-view").hidden = true;
  document.getElementById("where").textContent = "jobs";
  const params = {};
  for (const [key, id] of [["state", "f-state"], ["backend", "f-backend"],
                           ["user", "f-user"], ["q", "f-q"]]) {
    const value = document.getElementById(id).value.trim();
    if (value) params[key] = value;
  }
  api("/api/jobs", params).then((jobs) => {
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren();
    for (const job of jobs) {
      const row = body.insertRow();
      row.className = "job";
      row.dataset.job = job.id;
      cell(row, job.id);
      cell(row, job.name);
      cell(row, job.state, job.state);
      cell(row, job.reason);
      cell(row, job.backend);
      cell(row, job.user);
      cell(row, `${job.nodes} x ${job.procs_per_node}`);
      cell(row, when(job.created));
      cell(row, took(job));
      row.onclick = () => { location.hash = `#/job/${encodeURIComponent(job.id)}`; };
    }
  }).catch((e) => { document.getElementById("where").textContent = e.message; });
}

function showJob(id) {
  document.getElementById("list-view").hidden = true;
  document.getElementById("job-view").hidden = false;
  document.getElementById("where").textContent = `job ${id}`;
  const card = `/api/jobs/${encodeURIComponent(id)}/card?token=${encodeURIComponent(token)}`;
  document.getElementById("card-link").href = card;
  const frame = document.getElementById("card");
  if (frame.dataset.job !== id) {
    frame.dataset.job = id;
    frame.src = card;
    document.getElementById("logs").textContent = "";
    follow = { id, next: {} };
  }
  api(`/api/jobs/${encodeURIComponent(id)}`).then((job) => {
    document.getElementById("job-name").textContent = job.name;
    document.getElementById("job-id").textContent = job.job_id;
    const state = document.getElementById("job-state");
    state.textContent = job.state;
    state.className = job.state;
    document.getElementById("job-reason").textContent = job.reason || "";
    document.getElementById("job-summary").textContent = job.summary;
    const finished = ["SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"].includes(job.state);
    document.getElementById("cancel").disabled = finished;
    const body = document.querySelector("#ranks tbody");
    body.replaceChildren();
    for (const rank of job.ranks) {
      const row = body.insertRow();
      row.className = "rank";
      cell(row, rank.rank);
      cell(row, rank.node);
      cell(row, rank.host);
      cell(row, rank.state, rank.state);
      cell(row, rank.returncode);
    }
  });
  if (follow && follow.id === id && !follow.busy) {
    follow.busy = true;  // one request at a time: each answer moves "next" on
    api(`/api/jobs/${encodeURIComponent(id)}/logs`, { since: JSON.stringify(follow.next) })
      .then((got) => {
        if (!follow || follow.id !== id) return;
        follow.next = got.next;
        if (got.lines.length) {
          const pane = document.getElementById("logs");
          pane.textContent += got.lines.join("\n") + "\n";
          pane.scrollTop = pane.scrollHeight;
        }
      })
      .finally(() => { if (follow && follow.id === id) follow.busy = false; });
  }
}

function route() {
  const match = location.hash.match(/^#\/job\/(.+)$/);
  if (match) showJob(decodeURIComponent(match[1])); else showList();
}

document.getElementById("cancel").onclick = () => {
  const id = document.getElementById("job-id").textContent;
  const button = document.getElementById("cancel");
  button.disabled = true;
  api(`/api/jobs/${encodeURIComponent(id)}/cancel`, {}, "POST").then(route)
    .catch((e) => { document.getElementById("job-reason").textContent = e.message; });
};
for (const id of ["f-state", "f-backend", "f-user", "f-q"]) {
  document.getElementById(id).addEventListener("input", route);
}
window.addEventListener("hashchange", route);
route();
timer = setInterval(route, 1000);
