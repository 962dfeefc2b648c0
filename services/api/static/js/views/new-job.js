// The create-job form: every TrainingConfig field, built from the API's own OpenAPI schema, so
// that defaults, ranges and choices always match the server. Server errors are shown next to
// the field they name.

import { ApiError, JOBS, api } from "../api.js";
import { errorBox, h } from "../dom.js";

const GROUPS = [
  ["Model", ["model_architecture", "pretrained", "freeze_backbone", "init_from_job"]],
  [
    "Data",
    [
      "dataset",
      "batch_size",
      "num_workers",
      "validation_split",
      "test_split",
      "min_snr_db",
      "only_approved",
    ],
  ],
  ["Features", ["n_mels", "n_fft", "hop_length", "sample_rate", "num_samples"]],
  [
    "Training",
    [
      "epochs",
      "learning_rate",
      "weight_decay",
      "dropout_rate",
      "seed",
      "class_weighting",
      "label_smoothing",
      "grad_clip_norm",
    ],
  ],
  ["Scheduler", ["lr_scheduler", "warmup_epochs", "early_stop_patience", "monitor"]],
  [
    "Augmentation (training batches only)",
    [
      "aug_time_crop",
      "aug_noise_snr_db_min",
      "aug_noise_snr_db_max",
      "aug_freq_shift_hz",
      "aug_time_masks",
      "aug_time_mask_width",
      "aug_freq_masks",
      "aug_freq_mask_width",
    ],
  ],
  ["Hardware", ["accelerator", "devices", "precision"]],
];

const HINTS = {
  model_architecture: "atto/femto/pico/nano train on a CPU in seconds",
  pretrained: "ImageNet weights through timm; refused when no connected worker can load them",
  min_snr_db: "recordings below this SNR are left out",
  only_approved: "train only on approved recordings",
  seed: "empty: random; the same seed and config give the same metrics",
  hop_length: "at most n_fft",
  n_mels: "at most n_fft / 2 + 1",
  warmup_epochs: "linear warm-up per step before the scheduler; at most half the run",
  freeze_backbone: "head only; needs pretrained or init_from_job",
  init_from_job: "empty: none; a job id: start from its best checkpoint",
  class_weighting: "balanced: weights from the train split's class counts",
  grad_clip_norm: "empty: no clipping",
  aug_time_crop: "share of each waveform that may be cut",
  aug_noise_snr_db_min: "empty: no noise; else white noise at an SNR in [min, max]",
  aug_freq_shift_hz: "IQ recordings only",
  aug_time_mask_width: "share of the frames",
  aug_freq_mask_width: "share of the bands",
  precision: "auto: fp16 on GPUs, fp32 on CPUs; bf16 where native",
  sample_rate: "empty: the dataset's most common rate; recordings are resampled to it",
  num_samples: "empty: the longest recording's (capped); shorter ones are padded",
};

/** The schema of one property with `oneOf: [T, null]` folded into T plus `nullable`. */
function resolve(prop) {
  const variants = prop.oneOf ?? prop.anyOf;
  if (!variants) return { ...prop };
  const real = variants.find((v) => v.type !== "null") ?? {};
  const { oneOf, anyOf, ...outer } = prop;
  return { ...outer, ...real, nullable: variants.some((v) => v.type === "null") };
}

const label = (name) => name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

function input(name, schema) {
  const id = `f-${name}`;
  const common = { id, name, "aria-describedby": `err-${name}` };
  if (schema.type === "boolean") {
    return h("input", { ...common, type: "checkbox", checked: schema.default === true });
  }
  if (schema.enum) {
    return h(
      "select",
      common,
      schema.enum.map((v) => h("option", { value: v, selected: v === schema.default }, v)),
    );
  }
  if (schema.type === "integer" || schema.type === "number") {
    const el = h("input", {
      ...common,
      type: "number",
      inputmode: schema.type === "integer" ? "numeric" : "decimal",
      step: schema.type === "integer" ? 1 : "any",
      min: schema.minimum ?? schema.exclusiveMinimum,
      max: schema.maximum ?? schema.exclusiveMaximum,
      value: schema.default ?? "",
      required: !schema.nullable,
      placeholder: schema.nullable ? "none" : null,
      dataset: { kind: schema.type },
    });
    if (schema.exclusiveMinimum != null || schema.exclusiveMaximum != null) {
      el.addEventListener("input", () => {
        const v = el.valueAsNumber;
        const low = schema.exclusiveMinimum != null && v <= schema.exclusiveMinimum;
        const high = schema.exclusiveMaximum != null && v >= schema.exclusiveMaximum;
        el.setCustomValidity(
          low
            ? `must be greater than ${schema.exclusiveMinimum}`
            : high
              ? `must be less than ${schema.exclusiveMaximum}`
              : "",
        );
      });
    }
    return el;
  }
  const el = h("input", {
    ...common,
    type: "text",
    value: schema.default ?? "",
    minlength: schema.minLength,
    maxlength: schema.maxLength,
    required: (schema.minLength ?? 0) > 0,
    list: name === "dataset" ? "dataset-names" : null,
    placeholder: schema.nullable ? "none" : null,
    autocomplete: "off",
  });
  if (schema.pattern) {
    // Checked here rather than with the `pattern` attribute, whose regex dialect (the v flag)
    // rejects some ordinary JSON-schema patterns.
    const re = new RegExp(schema.pattern);
    el.addEventListener("input", () => {
      el.setCustomValidity(
        el.value === "" || re.test(el.value) ? "" : `must match ${schema.pattern}`,
      );
    });
  }
  return el;
}

function range(schema) {
  const low = schema.minimum ?? schema.exclusiveMinimum;
  const high = schema.maximum ?? schema.exclusiveMaximum;
  if (low == null && high == null) return null;
  const lo = low == null ? "" : `${schema.exclusiveMinimum != null ? ">" : ""}${low}`;
  const hi = high == null ? "" : `${high}`;
  return `${lo} … ${hi}`;
}

function field(name, schema) {
  const control = input(name, schema);
  const isCheck = schema.type === "boolean";
  return h(
    "div",
    { class: `field${isCheck ? " check" : ""}`, dataset: { field: name } },
    h("label", { for: control.id }, label(name)),
    control,
    h(
      "small",
      { class: "hint" },
      [range(schema) && `range ${range(schema)}`, HINTS[name]].filter(Boolean).join(" · "),
    ),
    h("small", { class: "field-error", id: `err-${name}`, "aria-live": "polite" }),
  );
}

function value(el, schema) {
  if (schema.type === "boolean") return el.checked;
  if (schema.type === "integer" || schema.type === "number") {
    return el.value === "" ? null : Number(el.value);
  }
  return schema.nullable && el.value.trim() === "" ? null : el.value;
}

/** The CPU profile: what trains on any CPU in a minute (the README's first job). */
const CPU_FIT = {
  accelerator: "cpu",
  model_architecture: "convnext_atto",
  pretrained: false,
  epochs: 5,
  batch_size: 16,
  num_workers: 0,
  n_fft: 256,
  hop_length: 64,
  n_mels: 32,
};

/** Defaults the connected workers can run, and a sentence saying why: {overrides, note}. No
 * worker connected: the seed's defaults (nothing is known about the machine yet). */
export function fitDefaults(workers, schemas) {
  if (!workers.length) {
    return { overrides: {}, note: "No worker is connected: the form shows the seed's defaults." };
  }
  const gpus = Math.max(0, ...workers.map((w) => w.gpu_count ?? 0));
  const overrides = gpus ? {} : { ...CPU_FIT };
  const arch = overrides.model_architecture ?? schemas.model_architecture?.default;
  const weights = workers.some(
    (w) => w.gpu_count >= (gpus ? 1 : 0) && (w.hub_reachable || w.pretrained_cached?.[arch]),
  );
  if (!weights) overrides.pretrained = false;
  const what = [`${workers.length} worker${workers.length > 1 ? "s" : ""}`];
  what.push(gpus ? `up to ${gpus} GPU${gpus > 1 ? "s" : ""} each` : "CPU only");
  if (!weights) what.push(`no ImageNet weights of ${arch}`);
  const changed = Object.entries(overrides)
    .filter(([name, v]) => schemas[name] && schemas[name].default !== v)
    .map(([name, v]) => `${name} ${JSON.stringify(v)}`);
  const note = changed.length
    ? `Defaults fit the connected workers (${what.join(", ")}): ${changed.join(", ")}.`
    : `The seed's defaults fit the connected workers (${what.join(", ")}).`;
  return { overrides, note, changed: changed.length > 0 };
}

export function newJobView(root, { query } = {}) {
  const status = h("div");
  root.append(
    h(
      "section",
      { class: "panel" },
      h("h1", {}, "New training job"),
      status,
      h("p", { class: "muted" }, "Loading the configuration schema…"),
    ),
  );
  const seed = query?.get("defaults") === "seed";
  build(root, status, seed).catch((error) => status.replaceChildren(errorBox(error)));
}

async function build(root, status, seed) {
  const [openapi, datasets, connected] = await Promise.all([
    api("/schema/openapi.json"),
    api("/api/v1/datasets").catch(() => ({ datasets: [] })),
    api("/api/v1/workers").catch(() => ({ workers: [] })),
  ]);
  const props = openapi.components?.schemas?.TrainingConfig?.properties;
  if (!props) throw new Error("the API's schema has no TrainingConfig");
  const seedSchemas = Object.fromEntries(Object.entries(props).map(([k, v]) => [k, resolve(v)]));
  const fit = fitDefaults(connected.workers, seedSchemas);
  const schemas = Object.fromEntries(
    Object.entries(seedSchemas).map(([k, v]) =>
      seed || !(k in fit.overrides) ? [k, v] : [k, { ...v, default: fit.overrides[k] }],
    ),
  );
  const defaultsNote = h(
    "p",
    { class: "defaults-note muted", dataset: { defaults: seed ? "seed" : "fit" } },
    seed ? "The seed's defaults. " : `${fit.note} `,
    seed
      ? h("a", { href: "#/new" }, "Use defaults that fit the connected workers")
      : fit.changed
        ? h(
            "a",
            { href: "#/new?defaults=seed", dataset: { action: "seed-defaults" } },
            "Use the seed's defaults",
          )
        : "",
  );
  const grouped = new Set(GROUPS.flatMap(([, names]) => names));
  const other = Object.keys(schemas).filter((k) => !grouped.has(k));
  const groups = [...GROUPS, ...(other.length ? [["Other", other]] : [])];

  const general = h("div", { class: "form-error" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create job");
  const nameSchema = { type: "string", minLength: 1, maxLength: 255 };
  const nameField = field("job_name", nameSchema);
  nameField.querySelector("input").placeholder = "e.g. convnext-atto lr 3e-3";
  nameField.classList.add("wide");

  const form = h(
    "form",
    { class: "job-form", novalidate: false },
    general,
    h("fieldset", { class: "group" }, h("legend", {}, "Job"), nameField),
    groups.map(([title, names]) =>
      h(
        "fieldset",
        { class: "group" },
        h("legend", {}, title),
        names.filter((n) => schemas[n]).map((n) => field(n, schemas[n])),
      ),
    ),
    h(
      "datalist",
      { id: "dataset-names" },
      datasets.datasets.map((d) => h("option", { value: d.name })),
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", onclick: () => rebuild() }, "Reset to defaults"),
      submit,
    ),
  );

  function rebuild() {
    root.replaceChildren();
    newJobView(root, { query: new URLSearchParams(seed ? "defaults=seed" : "") });
  }

  function clearErrors() {
    general.replaceChildren();
    for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  }

  function showErrors(error) {
    const fields = error instanceof ApiError ? error.fieldErrors() : {};
    let first = null;
    for (const [name, message] of Object.entries(fields)) {
      const wrapper = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
      if (!wrapper) continue;
      wrapper.classList.add("invalid");
      wrapper.querySelector(".field-error").textContent = message;
      first ??= wrapper;
    }
    if (first) {
      first.scrollIntoView({ block: "center" });
      first.querySelector("input, select")?.focus();
    } else {
      general.replaceChildren(errorBox(error));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const config = {};
    for (const [name, schema] of Object.entries(schemas)) {
      const el = form.elements.namedItem(name);
      if (el) config[name] = value(el, schema);
    }
    const body = { job_name: form.elements.namedItem("job_name").value.trim(), config };
    submit.disabled = true;
    try {
      const job = await api(JOBS, { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      showErrors(error);
    } finally {
      submit.disabled = false;
    }
  });

  status.replaceChildren();
  root
    .querySelector("section")
    .replaceChildren(h("h1", {}, "New training job"), defaultsNote, form);
}
