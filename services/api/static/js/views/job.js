// One job: status, progress and ETA, live charts over the WebSocket, actions and artifacts.

import { JOBS, api, withToken } from "../api.js";
import { lineChart } from "../charts.js";
import { badge, duration, errorBox, h, isFinished, num, percent, progressBar, when } from "../dom.js";
import { LiveJob } from "../live.js";

const MAX_BATCH_POINTS = 4000;

export function jobView(root, { params: [jobId] }) {
  const url = `${JOBS}/${encodeURIComponent(jobId)}`;
  let job = null;
  let live = null;
  let stopped = false;
  const epochs = new Map();
  const batch = { x: [], loss: [] };

  const title = h("h1", {}, "Job");
  const statusSlot = h("span");
  const connection = h("span", { class: "connection", dataset: { state: "idle" } });
  const cancelButton = h("button", { type: "button", class: "danger-outline", dataset: { action: "cancel" }, onclick: cancel }, "Cancel");
  const deleteButton = h("button", { type: "button", class: "danger", dataset: { action: "delete" }, onclick: remove }, "Delete");
  const actionError = h("div");
  const progress = h("div", { class: "progress-block" });
  const failure = h("div");
  const stats = h("dl", { class: "stats" });
  const artifacts = h("div", { class: "artifacts" });
  const configBox = h("div");
  const chartBoxes = {
    loss: h("div", { class: "chart", dataset: { chart: "loss" } }),
    accuracy: h("div", { class: "chart", dataset: { chart: "accuracy" } }),
    lr: h("div", { class: "chart", dataset: { chart: "lr" } }),
    batch: h("div", { class: "chart", dataset: { chart: "batch" } }),
  };

  root.append(
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "toolbar" },
        title,
        statusSlot,
        h("div", { class: "spacer" }),
        connection,
        h("a", { class: "button", href: `#/compare?ids=${jobId}` }, "Compare…"),
        cancelButton,
        deleteButton,
      ),
      h("p", { class: "muted mono" }, jobId),
      actionError,
      progress,
      failure,
      stats,
      artifacts,
    ),
    h("section", { class: "charts" }, Object.values(chartBoxes)),
    h("section", { class: "panel" }, h("h2", {}, "Configuration"), configBox),
  );

  const charts = {
    loss: lineChart(chartBoxes.loss, {
      title: "Loss per epoch",
      series: [{ label: "train loss" }, { label: "val loss" }],
      points: true,
      integerX: true,
    }),
    accuracy: lineChart(chartBoxes.accuracy, {
      title: "Accuracy per epoch",
      series: [
        { label: "train acc", color: "#16a34a" },
        { label: "val acc", color: "#9333ea" },
      ],
      points: true,
      integerX: true,
    }),
    lr: lineChart(chartBoxes.lr, {
      title: "Learning rate",
      series: [{ label: "learning rate", color: "#ea580c" }],
      points: true,
      integerX: true,
    }),
    batch: lineChart(chartBoxes.batch, {
      title: "Training loss per batch",
      series: [{ label: "batch loss", color: "#0891b2" }],
      points: false,
    }),
  };

  function drawEpochs() {
    const rows = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
    const xs = rows.map((r) => r.epoch);
    const col = (name) => rows.map((r) => r[name] ?? null);
    charts.loss.set(xs, col("train_loss"), col("val_loss"));
    charts.accuracy.set(xs, col("train_accuracy"), col("val_accuracy"));
    charts.lr.set(xs, col("learning_rate"));
  }

  function drawBatches() {
    charts.batch.set(batch.x.slice(), batch.loss.slice());
  }

  function addBatchPoint(x, loss) {
    if (loss == null || !Number.isFinite(x)) return;
    if (batch.x.length && x <= batch.x[batch.x.length - 1]) return;
    batch.x.push(x);
    batch.loss.push(loss);
    if (batch.x.length > MAX_BATCH_POINTS) {
      // Keep the chart light on long jobs: halve the older half's density.
      const half = Math.floor(batch.x.length / 2);
      batch.x = batch.x.slice(0, half).filter((_, i) => i % 2 === 0).concat(batch.x.slice(half));
      batch.loss = batch.loss.slice(0, half).filter((_, i) => i % 2 === 0).concat(batch.loss.slice(half));
    }
    drawBatches();
  }

  function eta() {
    if (!job || job.status !== "running") return null;
    const total = job.total_epochs ?? 0;
    const done = ((job.progress_percent ?? 0) / 100) * total;
    const left = total - done;
    const times = [...epochs.values()]
      .sort((a, b) => a.epoch - b.epoch)
      .map((r) => r.epoch_time_s)
      .filter((t) => t > 0)
      .slice(-5);
    if (times.length) return (left * times.reduce((a, b) => a + b, 0)) / times.length;
    const started = job.started_at ? Date.parse(job.started_at) : NaN;
    if (Number.isFinite(started) && done > 0.05) return (((Date.now() - started) / 1000) * left) / done;
    return null;
  }

  function renderStatus() {
    if (!job) return;
    title.textContent = job.job_name ?? "Job";
    document.title = `${job.job_name} · Heimdall Training`;
    statusSlot.replaceChildren(badge(job.status));
    cancelButton.disabled = isFinished(job.status);
    renderProgress();
    renderDetails();
  }

  function renderProgress() {
    const parts = [`epoch ${job.current_epoch ?? 0}/${job.total_epochs}`];
    if (job.status === "running" && job.total_batches) {
      parts.push(`batch ${job.current_batch ?? 0}/${job.total_batches}`);
    }
    parts.push(`${(job.progress_percent ?? 0).toFixed(1)} %`);
    const left = eta();
    if (left != null) parts.push(`ETA ${duration(left)}`);
    progress.replaceChildren(progressBar(job.progress_percent, parts.join(" · ")));
  }

  function renderDetails() {
    failure.replaceChildren(
      job.status === "failed"
        ? h("div", { class: "error-box failure", role: "alert" }, h("strong", {}, "Training failed: "), job.error_message ?? "no error message")
        : job.error_message
          ? h("div", { class: "warning-box" }, job.error_message)
          : "",
    );
    const m = job.metrics ?? {};
    const item = (term, value) => [h("div", {}, h("dt", {}, term), h("dd", {}, value))];
    stats.replaceChildren(
      ...item("train loss", num(m.train_loss ?? job.train_loss)),
      ...item("val loss", num(m.val_loss ?? job.val_loss)),
      ...item("train acc", percent(m.train_accuracy ?? job.train_accuracy)),
      ...item("val acc", percent(m.val_accuracy ?? job.val_accuracy)),
      ...item("learning rate", m.learning_rate == null ? "—" : Number(m.learning_rate).toExponential(2)),
      ...item("best epoch", job.best_epoch == null ? "—" : `${job.best_epoch} (val loss ${num(job.best_val_loss)})`),
      ...item("model", job.model_architecture ?? "—"),
      ...item("dataset", job.dataset ? `${job.dataset} · ${job.train_samples ?? "?"} train / ${job.val_samples ?? "?"} val` : "—"),
      ...item("created", when(job.created_at)),
      ...item("started", when(job.started_at)),
      ...item("finished", when(job.completed_at)),
    );
    const links = [];
    if (job.checkpoint_path) links.push(["checkpoint", "Checkpoint (.pt)"]);
    if (job.onnx_model_path) links.push(["onnx", "ONNX model"]);
    artifacts.replaceChildren(
      ...(links.length
        ? [
            h("span", { class: "muted" }, "Artifacts: "),
            ...links.map(([kind, text]) =>
              h("a", { class: "button", href: withToken(`${url}/artifacts/${kind}`), download: "", dataset: { artifact: kind } }, `⬇ ${text}`),
            ),
          ]
        : []),
    );
  }

  function renderConfig() {
    const config = job?.config ?? {};
    const entries = Object.entries(config).sort(([a], [b]) => a.localeCompare(b));
    configBox.replaceChildren(
      h(
        "dl",
        { class: "config" },
        entries.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", { class: "mono" }, JSON.stringify(v)))),
      ),
    );
  }

  function setConnection(state, detail) {
    connection.dataset.state = state;
    connection.textContent = {
      connecting: "connecting…",
      live: "● live",
      retrying: `reconnecting in ${duration((detail ?? 0) / 1000)}`,
      closed: "finished",
      error: `live feed: ${detail}`,
      idle: "",
    }[state];
    if (state === "closed" || state === "error") refresh();
  }

  function onMessage(message) {
    switch (message.event) {
      case "training_status": {
        const { event, metrics, timestamp, ...fields } = message;
        job = { ...job, ...fields, metrics: { ...(job?.metrics ?? {}), ...metrics } };
        if (message.status === "running" && message.current_batch && message.total_batches) {
          addBatchPoint(message.current_epoch - 1 + message.current_batch / message.total_batches, message.batch_loss);
        }
        renderStatus();
        break;
      }
      case "epoch_completed":
        epochs.set(message.epoch, message);
        drawEpochs();
        break;
      case "error":
        actionError.replaceChildren(errorBox(message.message));
        break;
    }
  }

  async function refresh(tries = 10) {
    try {
      const detail = await api(url);
      if (stopped) return;
      if (isFinished(job?.status) && !isFinished(detail.job.status) && tries > 1) {
        // The socket saw the end before the recorder wrote it: ask again shortly, and never
        // show a finished job as running meanwhile.
        setTimeout(() => refresh(tries - 1), 500);
        return;
      }
      job = { ...job, ...detail.job };
      for (const row of detail.recent_metrics ?? []) if (!epochs.has(row.epoch)) epochs.set(row.epoch, row);
      drawEpochs();
      renderStatus();
    } catch (error) {
      if (!stopped) actionError.replaceChildren(errorBox(error));
    }
  }

  async function cancel() {
    actionError.replaceChildren();
    cancelButton.disabled = true;
    try {
      const body = await api(`${url}/cancel`, { method: "POST" });
      job = { ...job, ...body.job };
      renderStatus();
    } catch (error) {
      actionError.replaceChildren(errorBox(error));
      cancelButton.disabled = isFinished(job?.status);
    }
  }

  async function remove() {
    if (!confirm(`Delete job “${job?.job_name ?? jobId}” and all its metrics, events and files?`)) return;
    try {
      await api(url, { method: "DELETE" });
      location.hash = "#/jobs";
    } catch (error) {
      actionError.replaceChildren(errorBox(error));
    }
  }

  async function load() {
    // The job first, then its metrics: the WebSocket resumes after the job's last event id,
    // so anything the metrics miss arrives on the socket (epochs are keyed, so none doubles).
    const detail = await api(url);
    job = detail.job;
    renderStatus();
    renderConfig();
    const [epochRows, batchRows] = await Promise.all([
      api(`${url}/metrics?phase=epoch`),
      api(`${url}/metrics?phase=train&points=1000`),
    ]);
    if (stopped) return;
    for (const row of epochRows.metrics) epochs.set(row.epoch, row);
    drawEpochs();
    const perEpoch = job.total_batches ?? 0;
    const maxBatch = new Map();
    for (const r of batchRows.metrics) maxBatch.set(r.epoch, Math.max(maxBatch.get(r.epoch) ?? 0, r.batch ?? 0));
    for (const r of batchRows.metrics) {
      const n = perEpoch || maxBatch.get(r.epoch) || 1;
      batch.x.push(r.epoch - 1 + (r.batch ?? n) / n);
      batch.loss.push(r.train_loss);
    }
    drawBatches();
    renderStatus();
    if (!isFinished(job.status)) {
      live = new LiveJob(jobId, {
        after: job.last_event_id ?? "0-0",
        onMessage,
        onState: setConnection,
      });
    }
  }

  load().catch((error) => {
    if (!stopped) actionError.replaceChildren(errorBox(error));
  });
  const tick = setInterval(() => job?.status === "running" && renderProgress(), 1000);

  return () => {
    stopped = true;
    clearInterval(tick);
    live?.stop();
    for (const chart of Object.values(charts)) chart.destroy();
  };
}
