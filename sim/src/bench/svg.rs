//! A small hand-written SVG line/scatter plot: stacked panels sharing a style, each with axes,
//! "nice" ticks, an optional log-scale y axis, a legend and labelled vertical markers. Enough
//! to show throughput and lag over time for ldr and PostgreSQL side by side; no plotting crate.
//!
//! Pure: [`render`] turns a [`Plot`] into the SVG text; non-finite points are skipped; text is
//! XML-escaped.

use std::fmt::Write as _;

/// One line (or set of dots) in a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// Any SVG color (`#1f77b4`).
    pub color: String,
    pub dashed: bool,
    /// Draw dots instead of a line (for per-event samples such as heartbeats).
    pub dots: bool,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn line(name: impl Into<String>, color: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color: color.into(),
            dashed: false,
            dots: false,
            points,
        }
    }

    pub fn dots(name: impl Into<String>, color: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            dots: true,
            ..Series::line(name, color, points)
        }
    }

    pub fn dashed(mut self) -> Series {
        self.dashed = true;
        self
    }
}

/// One chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic y axis (values at or below zero are drawn at the axis floor).
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Vertical lines at these x values with a label (phase boundaries).
    pub markers: Vec<(f64, String)>,
}

/// The whole figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plot {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
}

/// Colors used by the benchmark for each system.
pub const LDR_COLOR: &str = "#1f77b4";
pub const POSTGRES_COLOR: &str = "#ff7f0e";
pub const LAG_COLOR: &str = "#2ca02c";

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 280.0;
const HEADER: f64 = 60.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const PANEL_TOP: f64 = 34.0;
const PANEL_BOTTOM: f64 = 46.0;

/// XML text escaping.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Round tick values covering `[min, max]`, about `target` of them, steps of 1, 2 or 5 × 10^k.
pub fn nice_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    if !min.is_finite() || !max.is_finite() || target == 0 {
        return Vec::new();
    }
    let (min, max) = if max > min {
        (min, max)
    } else {
        (min - 0.5, min + 0.5)
    };
    let raw = (max - min) / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    // Round to the step's decimals so 3 × 0.2 prints and compares as 0.6.
    let scale = 10f64.powi((-step.log10().floor()).max(0.0) as i32);
    let first = (min / step - 1e-9).ceil() as i64;
    (0..=target as i64 * 3)
        .map(|i| ((first + i) as f64 * step * scale).round() / scale)
        .take_while(|v| *v <= max + step * 1e-9)
        .collect()
}

/// `1500` → `1.5k`, `2000000` → `2M`, `0.25` → `0.25`.
pub fn short_number(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else if a >= 1.0 || a == 0.0 {
        trim(format!("{v:.2}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

struct Frame {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    xmin: f64,
    xmax: f64,
    ymin: f64,
    ymax: f64,
    log_y: bool,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        self.x0 + (v - self.xmin) / (self.xmax - self.xmin) * self.w
    }

    fn y(&self, v: f64) -> f64 {
        let v = if self.log_y {
            v.max(self.ymin).log10()
        } else {
            v
        };
        let (lo, hi) = if self.log_y {
            (self.ymin.log10(), self.ymax.log10())
        } else {
            (self.ymin, self.ymax)
        };
        let f = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        self.y0 + self.h - f * self.h
    }
}

fn finite_points(series: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    series
        .points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

fn render_panel(out: &mut String, panel: &Panel, top: f64) {
    let x0 = LEFT;
    let y0 = top + PANEL_TOP;
    let w = WIDTH - LEFT - RIGHT;
    let h = PANEL_HEIGHT - PANEL_TOP - PANEL_BOTTOM;
    let mut xmin = f64::INFINITY;
    let mut xmax = f64::NEG_INFINITY;
    let mut ymax = f64::NEG_INFINITY;
    let mut ymin_positive = f64::INFINITY;
    for s in &panel.series {
        for (x, y) in finite_points(s) {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymax = ymax.max(y);
            if y > 0.0 {
                ymin_positive = ymin_positive.min(y);
            }
        }
    }
    for (x, _) in &panel.markers {
        if x.is_finite() {
            xmin = xmin.min(*x);
            xmax = xmax.max(*x);
        }
    }
    let empty = !xmin.is_finite();
    if empty {
        xmin = 0.0;
        xmax = 1.0;
        ymax = 1.0;
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let (ymin, ymax, y_ticks) = if panel.log_y {
        let lo = if ymin_positive.is_finite() {
            10f64.powf(ymin_positive.log10().floor())
        } else {
            0.1
        };
        let hi = if ymax > 0.0 {
            10f64.powf(ymax.log10().ceil())
        } else {
            1.0
        };
        let hi = if hi <= lo { lo * 10.0 } else { hi };
        let mut ticks = Vec::new();
        let mut t = lo;
        while t <= hi * 1.0001 && ticks.len() < 20 {
            ticks.push(t);
            t *= 10.0;
        }
        (lo, hi, ticks)
    } else {
        let hi = if ymax > 0.0 { ymax * 1.08 } else { 1.0 };
        let ticks = nice_ticks(0.0, hi, 5);
        let hi = ticks.last().copied().filter(|t| *t >= hi).unwrap_or(hi);
        (0.0, hi, ticks)
    };
    let frame = Frame {
        x0,
        y0,
        w,
        h,
        xmin,
        xmax,
        ymin,
        ymax,
        log_y: panel.log_y,
    };
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{:.1}" class="panel-title">{}</text>"#,
        top + 20.0,
        escape(&panel.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fcfcfc" stroke="#bbb"/>"##
    );
    // Grid and ticks.
    for t in &y_ticks {
        let y = frame.y(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            x0 + w,
            x0 - 6.0,
            y + 4.0,
            short_number(*t)
        );
    }
    for t in nice_ticks(xmin, xmax, 8) {
        let x = frame.x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{x:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"##,
            y0 + h,
            y0 + h + 16.0,
            short_number(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
        x0 + w / 2.0,
        y0 + h + 34.0,
        escape(&panel.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
        18.0,
        y0 + h / 2.0,
        18.0,
        y0 + h / 2.0,
        escape(&panel.y_label)
    );
    for (x, label) in &panel.markers {
        if !x.is_finite() {
            continue;
        }
        let px = frame.x(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" class="marker">{}</text>"##,
            y0 + h,
            px + 3.0,
            y0 + h - 5.0,
            escape(label)
        );
    }
    if empty {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">no data</text>"#,
            x0 + w / 2.0,
            y0 + h / 2.0
        );
    }
    // Data.
    for s in &panel.series {
        let color = escape(&s.color);
        if s.dots {
            let _ = write!(out, r#"<g fill="{color}" fill-opacity="0.7">"#);
            for (x, y) in finite_points(s) {
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="1.6"/>"#,
                    frame.x(x),
                    frame.y(y)
                );
            }
            out.push_str("</g>\n");
        } else {
            // A non-finite point breaks the line (phases that do not join up).
            let dash = if s.dashed {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            };
            for segment in s.points.split(|(x, y)| !x.is_finite() || !y.is_finite()) {
                if segment.len() < 2 {
                    continue;
                }
                let points: Vec<String> = segment
                    .iter()
                    .map(|(x, y)| format!("{:.1},{:.1}", frame.x(*x), frame.y(*y)))
                    .collect();
                let _ = writeln!(
                    out,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{}"/>"#,
                    points.join(" ")
                );
            }
        }
    }
    // Legend (top right, inside the frame, on a light box so data under it stays legible).
    if !panel.series.is_empty() {
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="236" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
            x0 + w - 240.0,
            y0 + 2.0,
            panel.series.len() as f64 * 16.0 + 6.0
        );
    }
    let mut ly = y0 + 16.0;
    for s in &panel.series {
        let lx = x0 + w - 230.0;
        let color = escape(&s.color);
        let dash = if s.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        if s.dots {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                lx + 9.0,
                ly - 4.0
            );
        } else {
            let _ = write!(
                out,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"{dash}/>"#,
                ly - 4.0,
                lx + 18.0,
                ly - 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{ly:.1}" class="legend">{}</text>"#,
            lx + 24.0,
            escape(&s.name)
        );
        ly += 16.0;
    }
}

/// The SVG document.
pub fn render(plot: &Plot) -> String {
    let height = HEADER + PANEL_HEIGHT * plot.panels.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    out.push_str(
        "<style>.title{font-size:18px;font-weight:bold}.subtitle{font-size:12px;fill:#555}\
         .panel-title{font-size:14px;font-weight:bold}.tick{font-size:11px;fill:#444}\
         .axis{font-size:12px;fill:#333}.legend{font-size:12px}.marker{font-size:10px;fill:#666}</style>\n",
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    out.push('\n');
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" class="title">{}</text><text x="{LEFT}" y="44" class="subtitle">{}</text>"#,
        escape(&plot.title),
        escape(&plot.subtitle)
    );
    for (i, panel) in plot.panels.iter().enumerate() {
        render_panel(&mut out, panel, HEADER + i as f64 * PANEL_HEIGHT);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(
            nice_ticks(0.0, 23_000.0, 5),
            vec![0.0, 5000.0, 10_000.0, 15_000.0, 20_000.0]
        );
        assert_eq!(nice_ticks(0.3, 0.9, 3), vec![0.4, 0.6, 0.8]);
        // Degenerate and nonsense ranges.
        assert!(!nice_ticks(5.0, 5.0, 4).is_empty());
        assert!(nice_ticks(f64::NAN, 1.0, 4).is_empty());
        assert!(nice_ticks(0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(20_000.0), "20k");
        assert_eq!(short_number(2_500_000.0), "2.5M");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(12.0), "12");
    }

    #[test]
    fn escapes_text() {
        assert_eq!(escape(r#"a<b & "c">"#), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn renders_panels_series_markers_and_legends() {
        let plot = Plot {
            title: "ldr <vs> postgres".into(),
            subtitle: "nodes=1".into(),
            panels: vec![
                Panel {
                    title: "throughput".into(),
                    x_label: "s".into(),
                    y_label: "rows/s".into(),
                    log_y: false,
                    series: vec![
                        Series::line(
                            "ldr",
                            LDR_COLOR,
                            vec![
                                (0.0, 1.0),
                                (1.0, 2.0),
                                (f64::NAN, f64::NAN),
                                (1.5, 1.0),
                                (2.0, 2.0),
                                (2.5, f64::NAN),
                            ],
                        ),
                        Series::line("postgres", POSTGRES_COLOR, vec![(0.0, 3.0), (2.0, 1.0)])
                            .dashed(),
                    ],
                    markers: vec![(1.0, "resume".into())],
                },
                Panel {
                    title: "latency".into(),
                    x_label: "s".into(),
                    y_label: "ms".into(),
                    log_y: true,
                    series: vec![Series::dots(
                        "ldr",
                        LDR_COLOR,
                        vec![(0.0, 0.5), (1.0, 40.0), (2.0, 0.0)],
                    )],
                    markers: vec![],
                },
                Panel::default(),
            ],
        };
        let svg = render(&plot);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("ldr &lt;vs&gt; postgres"));
        // The NaN breaks ldr's line in two; postgres has one.
        assert_eq!(count(&svg, "<polyline"), 3);
        assert_eq!(
            count(&svg, "stroke-dasharray=\"6,4\""),
            2,
            "line and legend"
        );
        // Three dots plus one legend dot.
        assert_eq!(count(&svg, "<circle"), 4);
        assert!(svg.contains(">resume</text>"));
        assert!(svg.contains(">no data</text>"), "the empty panel says so");
        // Log axis ticks are powers of ten covering 0.5..40.
        assert!(svg.contains(">0.1</text>") && svg.contains(">100</text>"));
        assert_eq!(count(&svg, "<g "), count(&svg, "</g>"));
        assert_eq!(count(&svg, "<text"), count(&svg, "</text>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
