// The DB Console's Metrics page: each .chart names its series in data-spec; this script asks
// the node's GET /ts/query for them (the whole cluster's, summed or per node), draws them with
// uPlot (hover a graph for the values at that time), and writes each series' last point into
// the chart's legend (<span class=last data-series=… data-value=…>) so that a headless browser
// or a test can read what was drawn. Plain script, no build step; served by the node.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  var rangeSecs = Number(root.dataset.rangeSecs) || 600;
  var perNode = root.dataset.agg === "node";
  var REFRESH_MS = 10000;
  var COLORS = ["#0055ff", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#5c940d", "#862e9c"];

  function fmt(unit, v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    switch (unit) {
      case "ns":
        if (v >= 1e9) return (v / 1e9).toFixed(2) + " s";
        if (v >= 1e6) return (v / 1e6).toFixed(1) + " ms";
        return (v / 1e3).toFixed(1) + " \u00b5s";
      case "s":
        return v.toFixed(1) + " s";
      case "bytes/s":
        if (v >= 1048576) return (v / 1048576).toFixed(1) + " MiB/s";
        if (v >= 1024) return (v / 1024).toFixed(1) + " KiB/s";
        return v.toFixed(0) + " B/s";
      case "/s":
        return (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " /s";
      default:
        return String(Math.round(v * 100) / 100);
    }
  }

  // Lag in seconds at sample time x of a replicated time v (0: none yet, the initial scan).
  function lag(x, v) {
    return v > 0 ? Math.max(0, x - v) : null;
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function load(chart) {
    var spec = JSON.parse(chart.dataset.spec);
    var end = Math.floor(Date.now() / 1000);
    var start = end - rangeSecs;
    var groups = {};
    spec.series.forEach(function (s) {
      var agg = perNode ? "per_node" : s.agg;
      var key = agg + "|" + (s.rate ? 1 : 0);
      (groups[key] = groups[key] || { agg: agg, rate: s.rate, series: [] }).series.push(s);
    });
    var lines = [];
    var notes = [];
    var requests = Object.keys(groups).map(function (key) {
      var g = groups[key];
      var url = "/ts/query?names=" + g.series.map(function (s) { return encodeURIComponent(s.name); }).join(",") +
        "&start=" + start + "&end=" + end + "&agg=" + g.agg + (g.rate ? "&rate=1" : "");
      return fetch(url, { credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (a) {
          if (!a.ok) { notes.push(a.body.error || "query failed"); return; }
          (a.body.skipped || []).forEach(function (sk) { notes.push("node " + sk.node_id + " skipped: " + sk.error); });
          a.body.series.forEach(function (out) {
            var s = g.series.filter(function (s) { return out.name === s.name || out.name.indexOf(s.name + "{") === 0; })[0];
            if (!s) return;
            var labels = out.name.slice(s.name.length);
            lines.push({
              label: s.label + (labels ? " " + labels : "") + (out.node_id !== undefined ? " n" + out.node_id : ""),
              name: out.name,
              node: out.node_id,
              transform: s.transform,
              points: out.points
            });
          });
        })
        .catch(function (e) { notes.push(String(e)); });
    });
    return Promise.all(requests).then(function () { draw(chart, spec, lines, notes); });
  }

  function draw(chart, spec, lines, notes) {
    var plot = chart.querySelector(".plot");
    var lasts = chart.querySelector(".lasts");
    if (chart._uplot) { chart._uplot.destroy(); chart._uplot = null; }
    var xsSet = {};
    lines.forEach(function (l) { l.points.forEach(function (p) { xsSet[p[0]] = true; }); });
    var xs = Object.keys(xsSet).map(Number).sort(function (a, b) { return a - b; });
    var legend = "";
    var points = 0;
    var data = [xs];
    lines.forEach(function (l) {
      var byTs = {};
      l.points.forEach(function (p) { byTs[p[0]] = p[1]; });
      data.push(xs.map(function (x) {
        var v = byTs[x];
        if (v === undefined) return null;
        return l.transform === "lag" ? lag(x, v) : v;
      }));
      points += l.points.length;
      var last = l.points[l.points.length - 1];
      if (last) {
        var shown = l.transform === "lag" ? lag(last[0], last[1]) : last[1];
        legend += "<span class=last data-series=\"" + esc(l.name) + "\"" +
          (l.node !== undefined ? " data-node=\"" + l.node + "\"" : "") +
          " data-ts=\"" + last[0] + "\" data-value=\"" + last[1] + "\">" + esc(l.label) + ": " + esc(fmt(spec.unit, shown)) + "</span>";
      }
    });
    notes.forEach(function (n) { legend += "<span class=err>" + esc(n) + "</span>"; });
    if (!lines.length || !xs.length) {
      legend = "<span class=nodata>no data in this time range</span>" + legend;
      chart.dataset.state = "empty";
      plot.innerHTML = "";
    } else {
      var opts = {
        width: Math.max(300, plot.clientWidth || 540),
        height: 220,
        scales: { x: { time: true } },
        series: [{}].concat(lines.map(function (l, i) {
          return {
            label: l.label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            spanGaps: false,
            value: function (u, v) { return fmt(spec.unit, v); }
          };
        })),
        axes: [{}, { size: 80, values: function (u, vals) { return vals.map(function (v) { return fmt(spec.unit, v); }); } }]
      };
      chart._uplot = new uPlot(opts, data, plot);
      chart.dataset.state = "drawn";
    }
    chart.dataset.points = String(points);
    lasts.innerHTML = legend;
  }

  function loadAll() {
    var charts = Array.prototype.slice.call(root.querySelectorAll(".chart"));
    return Promise.all(charts.map(load)).then(function () { root.dataset.loaded = String(Date.now()); });
  }

  loadAll();
  setInterval(loadAll, REFRESH_MS);
})();
