// The job list: status filter, pagination, selection for comparing; dataset summaries below.

import { api, JOBS } from "../api.js";
import { STATUSES, badge, errorBox, h, num, percent, progressBar, when } from "../dom.js";
import { replaceQuery } from "../router.js";

const PAGE_SIZE = 15;
const REFRESH_MS = 3000;

export function jobsView(root, { query }) {
  let status = query.get("status") ?? "";
  let page = Math.max(1, Number.parseInt(query.get("page") ?? "1", 10) || 1);
  const selected = new Set();

  const filter = h(
    "select",
    { name: "status", "aria-label": "Filter by status" },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)),
  );
  const compare = h(
    "a",
    { class: "button", href: "#/compare", "aria-disabled": "true" },
    "Compare selected",
  );
  const tbody = h("tbody");
  const pager = h("div", { class: "pager" });
  const message = h("div");
  const datasets = h("div", { class: "datasets" }, h("p", { class: "muted" }, "Loading datasets…"));

  root.append(
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, "Training jobs"),
        h("div", { class: "spacer" }),
        filter,
        compare,
        h("a", { class: "button primary", href: "#/new" }, "New job"),
      ),
      message,
      h(
        "table",
        { class: "jobs" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { class: "check" }),
            [
              "Name",
              "Status",
              "Progress",
              "Train loss",
              "Val loss",
              "Val acc",
              "Model",
              "Dataset",
              "Created",
            ].map((t) => h("th", {}, t)),
          ),
        ),
        tbody,
      ),
      pager,
    ),
    h("section", { class: "panel" }, h("h2", {}, "Datasets"), datasets),
  );

  function updateCompare() {
    const ids = [...selected];
    compare.setAttribute("href", `#/compare?ids=${ids.join(",")}`);
    compare.setAttribute("aria-disabled", String(ids.length < 2));
    compare.textContent = ids.length ? `Compare selected (${ids.length})` : "Compare selected";
  }

  function row(job) {
    const box = h("input", {
      type: "checkbox",
      "aria-label": `select ${job.job_name}`,
      checked: selected.has(job.id),
      onchange: (e) => {
        if (e.target.checked) selected.add(job.id);
        else selected.delete(job.id);
        updateCompare();
      },
    });
    return h(
      "tr",
      { dataset: { jobId: job.id } },
      h("td", { class: "check" }, box),
      h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.job_name)),
      h("td", { title: job.error_message ?? null }, badge(job.status)),
      h(
        "td",
        { class: "progress-cell" },
        progressBar(job.progress_percent, `${job.current_epoch ?? 0}/${job.total_epochs}`),
      ),
      h("td", { class: "num" }, num(job.train_loss)),
      h("td", { class: "num" }, num(job.val_loss)),
      h("td", { class: "num" }, percent(job.val_accuracy)),
      h("td", {}, job.model_architecture ?? "—"),
      h("td", {}, job.dataset ?? "—"),
      h("td", { class: "muted" }, when(job.created_at)),
    );
  }

  let timer = null;
  let stopped = false;

  async function load() {
    clearTimeout(timer);
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: (page - 1) * PAGE_SIZE });
    if (status) params.set("status", status);
    try {
      const { jobs, total } = await api(`${JOBS}?${params}`);
      if (stopped) return;
      message.replaceChildren();
      const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
      if (page > pages) {
        page = pages;
        return load();
      }
      tbody.replaceChildren(
        ...(jobs.length
          ? jobs.map(row)
          : [
              h(
                "tr",
                {},
                h(
                  "td",
                  { colspan: 10, class: "empty" },
                  status ? `No ${status} jobs.` : "No jobs yet.",
                ),
              ),
            ]),
      );
      const first = total ? (page - 1) * PAGE_SIZE + 1 : 0;
      pager.replaceChildren(
        h(
          "button",
          {
            type: "button",
            dataset: { page: "previous" },
            disabled: page <= 1,
            onclick: () => go(page - 1),
          },
          "‹ Previous",
        ),
        h(
          "span",
          {
            class: "muted",
            dataset: { range: `${first}-${(page - 1) * PAGE_SIZE + jobs.length}/${total}` },
          },
          `${first}–${(page - 1) * PAGE_SIZE + jobs.length} of ${total} · page ${page}/${pages}`,
        ),
        h(
          "button",
          {
            type: "button",
            dataset: { page: "next" },
            disabled: page >= pages,
            onclick: () => go(page + 1),
          },
          "Next ›",
        ),
      );
    } catch (error) {
      if (stopped) return;
      message.replaceChildren(errorBox(error));
    }
    if (!stopped && document.visibilityState !== "hidden") timer = setTimeout(load, REFRESH_MS);
    else if (!stopped) timer = setTimeout(load, REFRESH_MS * 5);
  }

  function go(newPage) {
    page = newPage;
    replaceQuery({ status, page: page > 1 ? page : "" });
    load();
  }

  filter.addEventListener("change", () => {
    status = filter.value;
    go(1);
  });

  loadDatasets(datasets);
  load();
  updateCompare();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

async function loadDatasets(container) {
  try {
    const { datasets } = await api("/api/v1/datasets");
    if (!datasets.length) {
      container.replaceChildren(
        h(
          "p",
          { class: "muted" },
          "No datasets. Create one with ",
          h("code", {}, "heimdall data synth --dataset default --samples 600"),
          ".",
        ),
      );
      return;
    }
    container.replaceChildren(...datasets.map(datasetCard));
  } catch (error) {
    container.replaceChildren(errorBox(error));
  }
}

function datasetCard(ds) {
  const classes = Object.entries(ds.classes ?? {});
  const most = Math.max(1, ...classes.map(([, n]) => n));
  const snr =
    ds.snr_db_min == null ? "—" : `${num(ds.snr_db_min, 1)} … ${num(ds.snr_db_max, 1)} dB`;
  return h(
    "article",
    { class: "dataset", dataset: { dataset: ds.name } },
    h("h3", {}, ds.name),
    ds.description ? h("p", { class: "muted" }, ds.description) : null,
    h(
      "dl",
      {},
      h("dt", {}, "recordings"),
      h("dd", {}, ds.recordings),
      h("dt", {}, "approved"),
      h(
        "dd",
        {},
        `${ds.approved} (${ds.recordings ? Math.round((100 * ds.approved) / ds.recordings) : 0} %)`,
      ),
      h("dt", {}, "SNR"),
      h("dd", {}, snr),
      h("dt", {}, "duration"),
      h("dd", {}, `${Math.round(ds.total_duration_s ?? 0)} s`),
    ),
    h(
      "ul",
      { class: "classes" },
      classes.map(([label, n]) =>
        h(
          "li",
          {},
          h("span", { class: "label" }, label),
          h("span", { class: "bar", style: `width:${(100 * n) / most}%` }),
          h("span", { class: "count" }, n),
        ),
      ),
    ),
  );
}
