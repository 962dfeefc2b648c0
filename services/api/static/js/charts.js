// uPlot line charts that follow their container's width. uPlot is loaded as a global by
// index.html (vendor/uPlot.iife.min.js).

export const PALETTE = [
  "#2563eb",
  "#dc2626",
  "#16a34a",
  "#9333ea",
  "#ea580c",
  "#0891b2",
  "#db2777",
  "#4d7c0f",
];

const HEIGHT = 230;
const INTEGER_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000];

/**
 * A line chart in `el`. `series`: [{label, color?, dash?}]; `x`: the x axis label.
 * Returns {set(x, ...ys), destroy()}. `el.dataset.points` holds the number of x values drawn,
 * so that a person or a test can tell how much a chart shows.
 */
export function lineChart(
  el,
  { title, x = "epoch", series, yLabel, log = false, points = "auto", integerX = false },
) {
  const width = () => Math.max(240, el.clientWidth || 480);
  const opts = {
    title,
    width: width(),
    height: HEIGHT,
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
    axes: [
      { label: x, labelSize: 18, size: 36, ...(integerX ? { incrs: INTEGER_STEPS } : {}) },
      { label: yLabel, labelSize: 18, size: axisWidth, values: (_, ticks) => ticks.map(tick) },
    ],
    series: [
      { label: x, value: (_, v) => (v == null ? "—" : +v.toFixed(3)) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color ?? PALETTE[i % PALETTE.length],
        width: 2,
        dash: s.dash,
        spanGaps: true,
        ...(points === "auto" ? {} : { points: { show: points, size: 5 } }),
        value: (_, v) => (v == null ? "—" : formatValue(v)),
      })),
    ],
  };
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, empty, el);
  el.dataset.points = "0";
  let pending = null;
  const resize = new ResizeObserver(() => plot.setSize({ width: width(), height: HEIGHT }));
  resize.observe(el);
  return {
    /** New data, drawn at the next animation frame (many updates in a burst draw once). */
    set(xs, ...ys) {
      const first = pending === null;
      pending = [xs, ...ys];
      if (!first) return;
      requestAnimationFrame(() => {
        const data = pending;
        pending = null;
        plot.setData(data);
        // Out of the cursor's way, the legend shows the latest values rather than dashes.
        if (plot.cursor.left == null || plot.cursor.left < 0) {
          plot.setLegend({ idx: data[0].length ? data[0].length - 1 : null });
        }
        el.dataset.points = String(data[0].length);
      });
    },
    destroy() {
      resize.disconnect();
      plot.destroy();
    },
  };
}

/** Axis ticks: enough significant digits that neighbours differ (0.0025, not 0.003). */
function tick(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2).replace(/\.?0+e/, "e");
  return String(+v.toPrecision(4));
}

/** The y axis is as wide as its longest tick label. */
function axisWidth(_, values) {
  const longest = Math.max(0, ...(values ?? []).map((v) => String(v).length));
  return Math.max(40, 16 + longest * 7);
}

function formatValue(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
  return +v.toFixed(4);
}
