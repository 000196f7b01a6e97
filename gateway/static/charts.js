// Time-series charts on a canvas: a few hundred points per series, redrawn at most a few times
// a second. No library: nothing to vendor, nothing fetched from elsewhere.
"use strict";

class TimeChart {
  constructor(canvas, { windowS = 300, colors = ["#1f6feb", "#b25e00"], unit = "" } = {}) {
    this.canvas = canvas;
    this.windowS = windowS;
    this.colors = colors;
    this.unit = unit;
    this.series = [];  // [{name, points: [[t, v], ...]}]
    this.dirty = false;
  }

  add(name, t, v) {
    let s = this.series.find((x) => x.name === name);
    if (!s) {
      s = { name, points: [] };
      this.series.push(s);
    }
    s.points.push([t, v]);
    const cutoff = t - this.windowS;
    while (s.points.length && s.points[0][0] < cutoff) s.points.shift();
    this.dirty = true;
  }

  clear() {
    this.series = [];
    this.dirty = true;
  }

  draw(now) {
    const ratio = window.devicePixelRatio || 1;
    const cssW = this.canvas.clientWidth || this.canvas.width;
    const cssH = this.canvas.clientHeight || this.canvas.height;
    if (this.canvas.width !== Math.round(cssW * ratio)) {
      this.canvas.width = Math.round(cssW * ratio);
      this.canvas.height = Math.round(cssH * ratio);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const pad = { l: 40, r: 6, t: 6, b: 16 };
    const w = cssW - pad.l - pad.r;
    const h = cssH - pad.t - pad.b;
    let max = 0;
    for (const s of this.series) for (const [, v] of s.points) max = Math.max(max, v);
    max = niceMax(max);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#667085";
    ctx.strokeStyle = "#eaecf0";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = pad.t + h - (h * i) / 2;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(pad.l + w, y);
      ctx.stroke();
      ctx.fillText(formatTick((max * i) / 2), 2, y + 3);
    }
    // the x axis spans the data until the window is full: a new chart is readable at once
    let first = now;
    for (const s of this.series) if (s.points.length) first = Math.min(first, s.points[0][0]);
    const span = Math.min(this.windowS, Math.max(10, now - first));
    const t0 = now - span;
    ctx.fillText(span >= 120 ? `-${Math.round(span / 60)} min` : `-${Math.round(span)} s`, pad.l, cssH - 3);
    ctx.fillText("now", pad.l + w - 18, cssH - 3);
    this.series.forEach((s, i) => {
      ctx.strokeStyle = this.colors[i % this.colors.length];
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      s.points.forEach(([t, v], j) => {
        const x = pad.l + ((t - t0) / span) * w;
        const y = pad.t + h - (max ? (v / max) * h : 0);
        if (j === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
      if (this.series.length > 1) {
        ctx.fillStyle = this.colors[i % this.colors.length];
        ctx.fillText(s.name, pad.l + 4 + i * 70, pad.t + 10);
      }
    });
  }
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function formatTick(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

window.TimeChart = TimeChart;
