// Hash router: #/jobs, #/new, #/jobs/<id>, #/compare?ids=a,b, #/workers. Each view renders into
// <main> and may return a cleanup function, called when the route changes.

import { errorBox, h } from "./dom.js";
import { compareView } from "./views/compare.js";
import { jobView } from "./views/job.js";
import { jobsView } from "./views/jobs.js";
import { newJobView } from "./views/new-job.js";
import { workersView } from "./views/workers.js";
import { currentRoute } from "./router.js";

const ROUTES = [
  [/^\/?$/, "jobs", jobsView],
  [/^\/jobs\/?$/, "jobs", jobsView],
  [/^\/new\/?$/, "new", newJobView],
  [/^\/jobs\/([^/]+)\/?$/, "jobs", jobView],
  [/^\/compare\/?$/, "compare", compareView],
  [/^\/workers\/?$/, "workers", workersView],
];

let cleanup = null;
let generation = 0;

async function render() {
  if (typeof cleanup === "function") cleanup();
  cleanup = null;
  const mine = ++generation;
  // Each view gets a fresh root, so a slow view that finishes after the route changed
  // only fills a detached element.
  const root = h("div", { class: "view" });
  document.getElementById("app").replaceChildren(root);
  const { path, query } = currentRoute();
  for (const [pattern, nav, view] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.dataset.nav === nav);
    }
    let done = null;
    try {
      done = await view(root, { params: match.slice(1).map(decodeURIComponent), query });
    } catch (error) {
      root.append(errorBox(error));
    }
    if (mine === generation) cleanup = done;
    else if (typeof done === "function") done();
    return;
  }
  root.append(errorBox(`No page at ${path}`));
}

window.addEventListener("hashchange", render);
render();
