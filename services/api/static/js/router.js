// Hash routes: the current one, and changing its query in place.

/** The current route: path, its parameters and its query. */
export function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

/** Changes the query of the current route without re-rendering the view. */
export function replaceQuery(params) {
  const { path } = currentRoute();
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== "" && v != null),
  ).toString();
  history.replaceState(null, "", `#${path}${query ? `?${query}` : ""}`);
}
