// The connected workers: what each machine offers and what it runs now (refreshed every 2 s).

import { api } from "../api.js";
import { errorBox, h, when } from "../dom.js";

const REFRESH_MS = 2000;

function weights(worker) {
  if (worker.hub_reachable) return "downloadable";
  const cached = Object.entries(worker.pretrained_cached ?? {})
    .filter(([, ok]) => ok)
    .map(([arch]) => arch);
  return cached.length ? `cached: ${cached.join(", ")}` : "none";
}

function devices(worker) {
  if (!worker.gpu_count) return "CPU";
  const names = [...new Set(worker.gpu_names ?? [])].join(", ");
  return `${worker.gpu_count} GPU${worker.gpu_count > 1 ? "s" : ""}${names ? ` (${names})` : ""}`;
}

function row(worker) {
  const gib = worker.memory_bytes ? `${(worker.memory_bytes / 2 ** 30).toFixed(1)} GiB` : "—";
  return h(
    "tr",
    { dataset: { worker: worker.id } },
    h("td", { class: "mono" }, worker.id),
    h("td", { dataset: { col: "devices" } }, devices(worker)),
    h("td", {}, String(worker.cpu_threads)),
    h("td", {}, gib),
    h("td", {}, `torch ${worker.torch_version}`, h("br"), `CUDA ${worker.cuda_version ?? "none"}`),
    h("td", {}, weights(worker)),
    h(
      "td",
      {},
      `${worker.jobs_running}/${worker.max_jobs}`,
      ...worker.running.map((id) => [h("br"), h("a", { href: `#/jobs/${id}` }, id.slice(0, 8))]),
    ),
    h("td", {}, when(worker.started_at)),
  );
}

export function workersView(root) {
  const body = h("tbody");
  const summary = h("p", { class: "muted" }, "Loading…");
  const problem = h("div");
  root.append(
    h(
      "section",
      { class: "panel" },
      h("h1", {}, "Workers"),
      summary,
      problem,
      h(
        "table",
        { class: "jobs workers" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["worker", "devices", "CPU threads", "memory", "versions", "ImageNet weights"].map(
              (t) => h("th", {}, t),
            ),
            h("th", {}, "jobs"),
            h("th", {}, "started"),
          ),
        ),
        body,
      ),
    ),
  );
  let stopped = false;
  async function load() {
    try {
      const { workers, total } = await api("/api/v1/workers");
      if (stopped) return;
      problem.replaceChildren();
      summary.textContent = total
        ? `${total} worker${total > 1 ? "s" : ""} connected.`
        : "No worker is connected: queued jobs wait until one starts (heimdall worker).";
      body.replaceChildren(...workers.map(row));
    } catch (error) {
      if (!stopped) problem.replaceChildren(errorBox(error));
    }
  }
  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
