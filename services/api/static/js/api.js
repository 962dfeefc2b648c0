// REST client: JSON in and out, bearer token from localStorage, 401 → ask for a token.

const TOKEN_KEY = "heimdall.token";
export const JOBS = "/api/v1/training/jobs";

/** An HTTP error with the API's body ({status_code, detail, extra}). */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body ?? {};
  }

  /** Field → message, from `extra.field`, from Litestar's `extra: [{key, message}]`, or from
   * a detail such as "config.batch_size: Expected `int` <= 512". Keys lose their "config."
   * prefix, so they match the form's input names. */
  fieldErrors() {
    const out = {};
    const add = (key, message) => {
      if (!key) return;
      const name = String(key)
        .replace(/^\$?\.?(config\.)?/, "")
        .split(/[.[]/)[0];
      if (name && !(name in out)) out[name] = message;
    };
    const { extra, detail } = this.body;
    if (Array.isArray(extra)) {
      for (const item of extra) add(item?.key, item?.message ?? detail);
    } else if (extra && typeof extra === "object" && extra.field) {
      add(extra.field, detail);
    }
    if (Object.keys(out).length === 0 && typeof detail === "string") {
      const at = detail.match(/at `\$\.([\w.]+)`/);
      const lead = detail.match(/^((?:config\.)?\w+): /);
      if (at) add(at[1], detail);
      else if (lead) add(lead[1], detail);
    }
    return out;
  }
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || null;
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** `url` with `?token=` added when a token is set (WebSockets cannot send headers; the API
 * accepts `?token=` on WebSocket routes only). */
export function withToken(url) {
  const token = getToken();
  if (!token) return url;
  const u = new URL(url, location.href);
  u.searchParams.set("token", token);
  return u.protocol.startsWith("http") && u.origin === location.origin
    ? u.pathname + u.search
    : u.toString();
}

/** Saves the file at `path` (an artifact): with a token it is fetched with the bearer header
 * (REST routes never take `?token=`, which would leave the secret in URLs and logs). */
export async function download(path) {
  const token = getToken();
  const resp = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!resp.ok) {
    const body = await resp.json().catch(() => null);
    throw new ApiError(resp.status, body ?? { detail: `HTTP ${resp.status}` });
  }
  const disposition = resp.headers.get("content-disposition") || "";
  const name = disposition.match(/filename="?([^";]+)"?/)?.[1] || path.split("/").pop();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await resp.blob());
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

let pendingAsk = null;

/** Shows the token dialog once, however many requests were refused at the same time. */
export function askToken(reason) {
  pendingAsk ??= new Promise((resolve) => {
    const dialog = document.getElementById("token-dialog");
    const form = dialog.querySelector("form");
    dialog.querySelector(".token-reason").textContent = reason;
    form.reset();
    dialog.addEventListener(
      "close",
      () => {
        const token = form.elements.token.value.trim();
        const ok = dialog.returnValue === "ok" && token !== "";
        if (ok) setToken(token);
        pendingAsk = null;
        resolve(ok);
      },
      { once: true },
    );
    dialog.showModal();
  });
  return pendingAsk;
}

/** Calls the API; resolves to the decoded body (null for 204), or throws ApiError. */
export async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    // A FormData body (file uploads) sets its own multipart Content-Type.
    const form = body instanceof FormData;
    if (body !== undefined && !form) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined || form ? body : JSON.stringify(body),
    });
    if (resp.status === 401) {
      const reason = token ? "The API refused the stored token." : "This API requires a token.";
      if (await askToken(reason)) continue;
      throw new ApiError(401, { detail: "a valid API token is required" });
    }
    if (resp.status === 204) return null;
    const isJson = (resp.headers.get("content-type") || "").includes("json");
    const data = isJson ? await resp.json().catch(() => null) : await resp.text();
    if (!resp.ok) {
      throw new ApiError(resp.status, data && typeof data === "object" ? data : { detail: data });
    }
    return data;
  }
}
