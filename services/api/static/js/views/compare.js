// Several jobs' curves on one chart: validation loss, accuracy and macro-F1 per epoch, overlaid.

import { JOBS, api } from "../api.js";
import { PALETTE, lineChart } from "../charts.js";
import { badge, errorBox, h, when } from "../dom.js";
import { replaceQuery } from "../router.js";

const METRICS = [
  ["val_loss", "Validation loss per epoch"],
  ["val_accuracy", "Validation accuracy per epoch"],
  ["train_loss", "Training loss per epoch"],
  ["val_macro_f1", "Validation macro-F1 per epoch"],
];

export function compareView(root, { query }) {
  const selected = new Set((query.get("ids") ?? "").split(",").filter(Boolean));
  const cache = new Map();
  let charts = [];
  let stopped = false;

  const picker = h("ul", { class: "picker" }, h("li", { class: "muted" }, "Loading jobs…"));
  const message = h("div");
  const chartArea = h("section", { class: "charts" });
  root.append(
    h(
      "section",
      { class: "panel" },
      h("h1", {}, "Compare jobs"),
      h(
        "p",
        { class: "muted" },
        "Select two or more jobs; their curves are drawn on one chart per metric.",
      ),
      picker,
      message,
    ),
    chartArea,
  );

  async function metricsOf(id) {
    if (!cache.has(id)) {
      const base = `${JOBS}/${encodeURIComponent(id)}`;
      // Macro-F1 comes from the evaluations, merged into the epoch rows.
      const rows = Promise.all([
        api(`${base}/metrics?phase=epoch`).then((b) => b.metrics),
        api(`${base}/evaluation`).catch(() => ({ val_epochs: [], val_macro_f1: [] })),
      ]).then(([metrics, ev]) => {
        const f1 = new Map((ev.val_epochs ?? []).map((e, i) => [e, ev.val_macro_f1[i]]));
        return metrics.map((r) => ({ ...r, val_macro_f1: f1.get(r.epoch) ?? null }));
      });
      cache.set(id, rows);
    }
    return cache.get(id);
  }

  async function draw(jobs) {
    for (const chart of charts) chart.destroy();
    charts = [];
    chartArea.replaceChildren();
    message.replaceChildren();
    const chosen = jobs.filter((j) => selected.has(j.id));
    replaceQuery({ ids: [...selected].join(",") });
    if (chosen.length === 0) {
      message.replaceChildren(h("p", { class: "muted" }, "Nothing selected yet."));
      return;
    }
    let series;
    try {
      series = await Promise.all(chosen.map((j) => metricsOf(j.id)));
    } catch (error) {
      message.replaceChildren(errorBox(error));
      return;
    }
    if (stopped) return;
    const epochs = [...new Set(series.flatMap((rows) => rows.map((r) => r.epoch)))].sort(
      (a, b) => a - b,
    );
    for (const [name, title] of METRICS) {
      const el = h("div", { class: "chart", dataset: { chart: name } });
      chartArea.append(el);
      const chart = lineChart(el, {
        title,
        series: chosen.map((j, i) => ({ label: j.job_name, color: PALETTE[i % PALETTE.length] })),
        points: epochs.length <= 60,
        integerX: true,
      });
      const columns = series.map((rows) => {
        const byEpoch = new Map(rows.map((r) => [r.epoch, r[name]]));
        return epochs.map((e) => byEpoch.get(e) ?? null);
      });
      chart.set(epochs, ...columns);
      charts.push(chart);
    }
  }

  async function load() {
    const { jobs } = await api(`${JOBS}?limit=100`);
    // Jobs asked for by id but older than the newest 100 are fetched one by one.
    const missing = [...selected].filter((id) => !jobs.some((j) => j.id === id));
    const extra = await Promise.all(
      missing.map((id) =>
        api(`${JOBS}/${encodeURIComponent(id)}`)
          .then((d) => d.job)
          .catch(() => null),
      ),
    );
    const all = [...extra.filter(Boolean), ...jobs];
    if (stopped) return;
    picker.replaceChildren(
      ...(all.length ? [] : [h("li", { class: "muted" }, "No jobs yet.")]),
      ...all.map((job) =>
        h(
          "li",
          {},
          h(
            "label",
            {},
            h("input", {
              type: "checkbox",
              value: job.id,
              checked: selected.has(job.id),
              onchange: (e) => {
                if (e.target.checked) selected.add(job.id);
                else selected.delete(job.id);
                draw(all);
              },
            }),
            " ",
            job.job_name,
            " ",
            badge(job.status),
            h(
              "span",
              { class: "muted" },
              ` ${job.model_architecture ?? ""} · ${when(job.created_at)}`,
            ),
          ),
        ),
      ),
    );
    await draw(all);
  }

  load().catch((error) => message.replaceChildren(errorBox(error)));
  return () => {
    stopped = true;
    for (const chart of charts) chart.destroy();
  };
}
