//! The report kit every experiment and benchmark uses: histograms and percentiles, bootstrap
//! confidence intervals, Markdown tables, a results folder with `results.json`, `report.md` and
//! SVG plots, per-arm plots of a loss sweep, and progress bars.
//!
//! It stays inside the lab (rather than a top-level module) because its bootstrap draws from the
//! lab's seeded generator (`impair::Rng`), so a report is as reproducible as the link;
//! it imports nothing else from the lab, and nothing in it is lab-specific to use: the MQTT
//! load generator in `benches/` uses it as `quiclab::lab::report`.
//!
//! * Histograms ([`new_histogram`]) and percentiles come from [`hdrhistogram`] at 3 significant
//!   digits (0.1% relative error).
//! * Confidence intervals are percentile bootstraps (Efron & Tibshirani 1993, ch. 13) that
//!   resample **runs**, not requests: requests within one run share a connection, a congestion
//!   window and a loss pattern, so they are not independent, and resampling them would give
//!   intervals far too narrow.
//! * A results folder ([`ResultsDir`]) holds everything directly in the directory given (which
//!   may already exist): `results.json` with the full configuration, seed, measured link,
//!   relay lateness, versions and every raw sample; `report.md` with tables; `*.svg` plots drawn
//!   by `plotters`' SVG backend (text stays SVG `<text>`, no fonts needed).
//! * [`progress`] is an `indicatif` bar on standard error, drawn only on a terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::impair::Rng;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating the folder or writing a file in it failed.
    #[error("cannot write {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The results could not be encoded as JSON.
    #[error("cannot encode results.json")]
    Json(#[source] serde_json::Error),
    /// plotters could not draw a plot.
    #[error("cannot draw the plot {path}")]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// plotters' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Largest value a histogram of nanoseconds needs: 100 s.
pub const HISTOGRAM_MAX_NS: u64 = 100_000_000_000;
/// Largest value a histogram of microseconds needs: 100 s.
pub const HISTOGRAM_MAX_US: u64 = 100_000_000;

/// An empty histogram of integer values from 1 to `highest` (e.g. [`HISTOGRAM_MAX_NS`] or
/// [`HISTOGRAM_MAX_US`]) at 3 significant digits (0.1% relative error). Recording a value above
/// `highest` fails (`record` returns an error, `saturating_record` clamps); read it back with
/// [`Percentiles::from_histogram`].
pub fn new_histogram(highest: u64) -> Histogram<u64> {
    // hdrhistogram needs highest >= 2 * lowest; 3 significant digits is always valid.
    Histogram::new_with_bounds(1, highest.max(2), 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits is valid"))
}

/// Serialize a duration as fractional milliseconds.
pub fn ser_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// Serialize a duration as fractional microseconds.
pub fn ser_duration_us<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e6)
}

/// Summary of a distribution.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub n: u64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Values are recorded as integers of this many units per 1 (so 3 decimals survive).
const SCALE: f64 = 1000.0;

impl Percentiles {
    /// Percentiles of `values` (any unit; negative values are clamped to 0).
    pub fn of(values: &[f64]) -> Percentiles {
        let mut h = Histogram::<u64>::new(3).expect("3 significant digits is valid");
        h.auto(true);
        for &v in values {
            let _ = h.record((v.max(0.0) * SCALE).round() as u64);
        }
        let mut p = Percentiles::from_histogram(&h, 1.0 / SCALE);
        if !values.is_empty() {
            // The exact mean and extremes, not the histogram's bucketed ones.
            p.mean = values.iter().sum::<f64>() / values.len() as f64;
            p.min = values.iter().copied().fold(f64::INFINITY, f64::min).max(0.0);
            p.max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max).max(0.0);
        }
        p
    }

    /// Percentiles of a histogram whose values are multiplied by `scale` (e.g. 1e-3 for ns → µs).
    pub fn from_histogram(h: &Histogram<u64>, scale: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 * scale;
        Percentiles {
            n: h.len(),
            min: h.min() as f64 * scale,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max: h.max() as f64 * scale,
            mean: h.mean() * scale,
        }
    }
}

/// The `q` quantile (0..=1) of `values` by linear interpolation between order statistics
/// (Hyndman & Fan type 7, the default of R and NumPy). `NaN` for no values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    if i + 1 < v.len() {
        v[i] + (v[i + 1] - v[i]) * frac
    } else {
        v[i]
    }
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The arithmetic mean of `values`.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// A point estimate with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ci {
    /// The statistic over all runs pooled.
    pub estimate: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
    /// Confidence level, e.g. 0.95.
    pub confidence: f64,
    /// Bootstrap resamples drawn.
    pub resamples: usize,
    /// Runs resampled.
    pub runs: usize,
}

/// A percentile-bootstrap confidence interval of `statistic` with runs as the resampling unit:
/// each resample draws `runs.len()` runs with replacement, pools their samples and computes the
/// statistic; the interval is the α/2 and 1−α/2 quantiles of those values. Seeded, so a report
/// is reproducible. With fewer than two runs the interval is just the estimate.
pub fn bootstrap_ci(
    runs: &[Vec<f64>],
    statistic: impl Fn(&[f64]) -> f64,
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> Ci {
    let pooled: Vec<f64> = runs.iter().flatten().copied().collect();
    let estimate = statistic(&pooled);
    if runs.len() < 2 || resamples == 0 {
        return Ci { estimate, lo: estimate, hi: estimate, confidence, resamples: 0, runs: runs.len() };
    }
    let mut rng = Rng::new(seed, 0xB007);
    let mut stats = Vec::with_capacity(resamples);
    let mut sample = Vec::with_capacity(pooled.len());
    for _ in 0..resamples {
        sample.clear();
        for _ in 0..runs.len() {
            let pick = (rng.next_u64() % runs.len() as u64) as usize;
            sample.extend_from_slice(&runs[pick]);
        }
        stats.push(statistic(&sample));
    }
    let alpha = 1.0 - confidence;
    Ci {
        estimate,
        lo: quantile(&stats, alpha / 2.0),
        hi: quantile(&stats, 1.0 - alpha / 2.0),
        confidence,
        resamples,
        runs: runs.len(),
    }
}

/// The interval of the **median of per-run paired differences**: `diffs[r]` is one run's
/// `a − b`, both arms measured on the same link seed in that run, so the run is the unit and the
/// pairing removes what the two arms share. Distribution-free (the sign test inverted, e.g.
/// Hollander & Wolfe, *Nonparametric Statistical Methods*, §3.6): the interval between the k-th
/// smallest and the k-th largest difference, with the largest k for which the binomial(n, ½)
/// tails leave coverage of at least `confidence`; its exact coverage is recorded in
/// [`Ci::confidence`]. Unlike a percentile bootstrap it does not claim more than a few runs can
/// give: below 6 runs no interval reaches 95%, and the result spans everything
/// (`lo = −∞`, `hi = +∞`), so [`Verdict::of`] says "not resolved". Non-finite differences (a run
/// without the measure) are left out.
pub fn paired_ci(diffs: &[f64], confidence: f64, _seed: u64) -> Ci {
    let mut d: Vec<f64> = diffs.iter().copied().filter(|x| x.is_finite()).collect();
    d.sort_by(f64::total_cmp);
    let n = d.len();
    let estimate = median(&d);
    let alpha = 1.0 - confidence;
    // P(B ≤ j) for B ~ Binomial(n, 1/2), cumulatively.
    let mut best: Option<(usize, f64)> = None;
    let (mut cdf, mut pmf) = (0.0f64, 0.5f64.powi(n as i32));
    for j in 0..n / 2 {
        cdf += pmf;
        // Interval [d(j+1), d(n−j)] (1-based) misses the median with probability 2·P(B ≤ j).
        if 2.0 * cdf <= alpha {
            best = Some((j, 1.0 - 2.0 * cdf));
        } else {
            break;
        }
        pmf *= (n - j) as f64 / (j + 1) as f64;
    }
    match best {
        Some((j, coverage)) => Ci { estimate, lo: d[j], hi: d[n - 1 - j], confidence: coverage, resamples: 0, runs: n },
        None => Ci { estimate, lo: f64::NEG_INFINITY, hi: f64::INFINITY, confidence: 1.0, resamples: 0, runs: n },
    }
}

/// What an interval of a difference `a − b` supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval is below 0: `a` is lower.
    ALower,
    /// The whole interval is above 0: `b` is lower.
    BLower,
    /// The interval contains 0: no difference resolved at this many runs.
    NotResolved,
}

impl Verdict {
    /// The verdict an interval of `a − b` supports (an interval touching 0 resolves nothing).
    pub fn of(ci: &Ci) -> Verdict {
        if !(ci.lo.is_finite() && ci.hi.is_finite()) || ci.runs < 2 {
            Verdict::NotResolved
        } else if ci.hi < 0.0 {
            Verdict::ALower
        } else if ci.lo > 0.0 {
            Verdict::BLower
        } else {
            Verdict::NotResolved
        }
    }
}

/// A published comparison: the interval of `a − b` and the one sentence it supports.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was compared, e.g. `request latency p50 at 2% loss`.
    pub what: String,
    /// Name of arm `a`.
    pub a: String,
    /// Name of arm `b`.
    pub b: String,
    /// Unit of the difference (`ms`, `%`).
    pub unit: String,
    /// Median of the per-run differences `a − b`, with its interval.
    pub diff: Ci,
    /// What the interval supports.
    pub verdict: Verdict,
    /// The sentence, generated from the numbers and nothing else.
    pub sentence: String,
}

impl Finding {
    /// The confidence every finding asks for.
    pub const CONFIDENCE: f64 = 0.95;

    /// The finding for per-run paired differences `a − b` (`diffs[r]` from run `r`).
    pub fn paired(
        what: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
        unit: &str,
        diffs: &[f64],
        seed: u64,
    ) -> Finding {
        Finding::from_ci(what, a, b, unit, paired_ci(diffs, Finding::CONFIDENCE, seed))
    }

    /// The finding an interval of `a − b` supports.
    pub fn from_ci(
        what: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
        unit: &str,
        diff: Ci,
    ) -> Finding {
        let (what, a, b) = (what.into(), a.into(), b.into());
        let verdict = Verdict::of(&diff);
        let pct = format!("{:.1}", diff.confidence * 100.0);
        let sentence = match verdict {
            Verdict::ALower => format!(
                "{what}: {a} lower than {b} by {:.1} {unit} ({pct}% CI {:.1} to {:.1}, {} runs)",
                -diff.estimate, -diff.hi, -diff.lo, diff.runs
            ),
            Verdict::BLower => format!(
                "{what}: {b} lower than {a} by {:.1} {unit} ({pct}% CI {:.1} to {:.1}, {} runs)",
                diff.estimate, diff.lo, diff.hi, diff.runs
            ),
            Verdict::NotResolved if diff.runs == 0 => {
                format!("{what}: not resolved: no run to compare ({a} − {b})")
            }
            Verdict::NotResolved if !diff.lo.is_finite() => format!(
                "{what}: not resolved: {} runs cannot give a {:.0}% interval of the median difference \
                 ({a} − {b} = {:.1} {unit} at the median)",
                diff.runs,
                Finding::CONFIDENCE * 100.0,
                diff.estimate
            ),
            Verdict::NotResolved => format!(
                "{what}: no difference resolved between {a} and {b} ({a} − {b} = {:.1} {unit}, {pct}% CI {:.1} to {:.1} \
                 spans 0, {} runs)",
                diff.estimate, diff.lo, diff.hi, diff.runs
            ),
        };
        Finding { what, a, b, unit: unit.to_string(), diff, verdict, sentence }
    }
}

/// Where the code that produced a result came from: `git rev-parse HEAD` and whether the work
/// tree had uncommitted changes, read at run time from the source folder this binary was built
/// from (`None` when that folder or git is not there).
#[derive(Debug, Clone, Serialize)]
pub struct Commit {
    /// The commit id.
    pub id: String,
    /// Whether `git status --porcelain` listed changes (tracked files only).
    pub dirty: bool,
}

/// The commit of the source this binary was built from, if it can be read.
pub fn commit() -> Option<Commit> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let id = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(Commit { id, dirty })
}

/// Versions of what produced a result.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    /// quiclab's own version.
    pub quiclab: &'static str,
    /// The kernel (`uname -sr`), whose TCP stack one side of every comparison is.
    pub kernel: String,
    /// Versions of the protocol crates, as locked in `Cargo.lock` when this binary was built.
    pub crates: BTreeMap<&'static str, String>,
    /// The source commit, when the binary runs beside its source tree.
    pub commit: Option<Commit>,
}

const LOCKFILE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"));

/// quiclab's, the kernel's and the protocol crates' versions.
pub fn versions() -> Versions {
    let mut crates = BTreeMap::new();
    let wanted = ["quinn", "quinn-proto", "h3", "h3-quinn", "rustls", "hyper", "h2", "tokio"];
    let mut name: Option<&str> = None;
    for line in LOCKFILE.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if let Some(w) = wanted.iter().find(|w| **w == n) {
                crates.entry(*w).or_insert_with(|| v.trim_matches('"').to_string());
            }
        }
    }
    // SAFETY: uname fills the zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    let kernel = if unsafe { libc::uname(&mut u) } == 0 {
        let s = |f: &[libc::c_char]| {
            let b: Vec<u8> = f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
            String::from_utf8_lossy(&b).into_owned()
        };
        format!("{} {}", s(&u.sysname), s(&u.release))
    } else {
        "unknown".into()
    };
    Versions { quiclab: env!("CARGO_PKG_VERSION"), kernel, crates, commit: commit() }
}

/// A Markdown table.
pub fn md_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s =
        format!("| {} |\n|{}|\n", headers.join(" | "), headers.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// A results folder: everything is written directly into it.
#[derive(Debug, Clone)]
pub struct ResultsDir {
    dir: PathBuf,
}

impl ResultsDir {
    /// Use `dir`, creating it (and its parents) if needed; an existing folder is fine, and files
    /// of the same names in it are replaced.
    pub fn create(dir: impl Into<PathBuf>) -> Result<ResultsDir, ReportError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| ReportError::Io { path: dir.clone(), source })?;
        Ok(ResultsDir { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `dir/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Write `dir/name`.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf, ReportError> {
        let path = self.path(name);
        std::fs::write(&path, contents).map_err(|source| ReportError::Io { path: path.clone(), source })?;
        Ok(path)
    }

    /// Write `results.json` (pretty-printed).
    pub fn write_json(&self, value: &impl Serialize) -> Result<PathBuf, ReportError> {
        let text = serde_json::to_string_pretty(value).map_err(ReportError::Json)?;
        self.write("results.json", text + "\n")
    }

    /// Write `report.md`.
    pub fn write_markdown(&self, text: &str) -> Result<PathBuf, ReportError> {
        self.write("report.md", text)
    }
}

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Optional `(lo, hi)` per point, drawn as error bars.
    pub bars: Option<Vec<(f64, f64)>>,
}

impl Series {
    /// A line without error bars.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, bars: None }
    }

    /// The empirical CDF of `samples` (x = value, y = fraction ≤ x), at most
    /// [`CDF_POINTS`] points (evenly spaced ranks, the last always in), so a plot of many
    /// thousand samples stays small.
    pub fn cdf(name: impl Into<String>, samples: &[f64]) -> Series {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let step = n.div_ceil(CDF_POINTS).max(1);
        let points = v
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % step == 0 || i + 1 == n)
            .map(|(i, x)| (*x, (i + 1) as f64 / n as f64))
            .collect();
        Series::line(name, points)
    }

    /// Points with confidence intervals (e.g. p99 latency per loss rate).
    pub fn with_ci(name: impl Into<String>, points: &[(f64, Ci)]) -> Series {
        Series {
            name: name.into(),
            points: points.iter().map(|(x, c)| (*x, c.estimate)).collect(),
            bars: Some(points.iter().map(|(_, c)| (c.lo, c.hi)).collect()),
        }
    }
}

/// Most points [`Series::cdf`] keeps.
pub const CDF_POINTS: usize = 1000;

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = (hi - lo) * 0.04;
        (lo - pad, hi + pad)
    }
}

/// Draw `series` as lines into the SVG file `path` (800×500).
pub fn plot(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), ReportError> {
    use plotters::drawing::DrawingAreaErrorKind;
    use plotters::prelude::*;
    let err =
        |e: DrawingAreaErrorKind<std::io::Error>| ReportError::Plot { path: path.to_path_buf(), source: Box::new(e) };
    let (x0, x1) = span(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = span(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1).chain(s.bars.iter().flatten().flat_map(|(lo, hi)| [*lo, *hi]))),
    );
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0.min(0.0)..y1)
        .map_err(err)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if let Some(bars) = &s.bars {
            let whisker = (x1 - x0) * 0.006;
            for ((x, _), (lo, hi)) in s.points.iter().zip(bars) {
                for seg in [
                    vec![(*x, *lo), (*x, *hi)],
                    vec![(x - whisker, *lo), (x + whisker, *lo)],
                    vec![(x - whisker, *hi), (x + whisker, *hi)],
                ] {
                    chart.draw_series(std::iter::once(PathElement::new(seg, color))).map_err(err)?;
                }
            }
        }
    }
    if series.len() > 1 || series.iter().any(|s| !s.name.is_empty()) {
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The arms of a loss sweep (the variants an experiment compares on the same link, e.g. HTTP/2
/// vs HTTP/3), for plots with one line per arm.
#[derive(Debug, Clone, Copy)]
pub struct Arms<'a, A> {
    /// Every arm, in legend order.
    pub all: &'a [A],
    /// An arm's legend label.
    pub name: fn(A) -> &'static str,
}

impl<A: Copy> Arms<'_, A> {
    /// Draw one line per arm into the SVG file `path`: `series(arm, label)` builds it.
    pub fn plot(
        &self,
        path: &Path,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: impl Fn(A, &'static str) -> Series,
    ) -> Result<(), ReportError> {
        let lines: Vec<Series> = self.all.iter().map(|&a| series(a, (self.name)(a))).collect();
        plot(path, title, x_label, y_label, &lines)
    }

    /// One CDF plot per loss rate (a fraction), one line per arm:
    /// `{file_prefix}cdf-loss-{loss %, 2 decimals}pct.svg` in `dir`, titled
    /// "`{title}`, loss X%"; `samples(arm, loss)` are the arm's samples at that loss rate.
    pub fn cdf_per_loss(
        &self,
        dir: &ResultsDir,
        file_prefix: &str,
        title: &str,
        x_label: &str,
        losses: &[f64],
        samples: impl Fn(A, f64) -> Vec<f64>,
    ) -> Result<(), ReportError> {
        for &loss in losses {
            let pct = loss * 100.0;
            self.plot(
                &dir.path(&format!("{file_prefix}cdf-loss-{pct:.2}pct.svg")),
                &format!("{title}, loss {pct:.2}%"),
                x_label,
                "fraction",
                |arm, label| Series::cdf(label, &samples(arm, loss)),
            )?;
        }
        Ok(())
    }
}

/// A progress bar on standard error for `total` steps; drawn only when standard error is a
/// terminal, so logs and CI output stay clean. Use it for anything longer than a few seconds.
pub fn progress(total: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} ({eta} left)") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_quantiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!(p.n, 1000);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        assert_eq!(p.max, 1000.0);
        assert!((p.mean - 500.5).abs() < 1e-9);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(Percentiles::of(&[]).n, 0);
        let small = Percentiles::of(&[0.0123, 0.0456]);
        assert!((small.max - 0.0456).abs() < 1e-3);
    }

    #[test]
    fn bootstrap_resamples_runs() {
        // Ten runs whose means differ a lot: the interval must reflect the spread between runs,
        // not the (tiny) spread within a run of many identical requests.
        let runs: Vec<Vec<f64>> = (0..10).map(|r| vec![f64::from(r) * 10.0; 1000]).collect();
        let ci = bootstrap_ci(&runs, mean, 0.95, 2000, 1);
        assert!((ci.estimate - 45.0).abs() < 1e-9);
        assert!(ci.lo < 35.0 && ci.hi > 55.0, "{ci:?}");
        assert_eq!(bootstrap_ci(&runs, mean, 0.95, 2000, 1), ci, "seeded");
        let one = bootstrap_ci(&runs[..1], mean, 0.95, 100, 1);
        assert_eq!((one.lo, one.hi), (0.0, 0.0));
    }

    #[test]
    fn results_dir_writes_json_markdown_and_svg() {
        let tmp = std::env::temp_dir().join(format!("quiclab-report-{}", std::process::id()));
        let out = ResultsDir::create(&tmp).unwrap();
        ResultsDir::create(&tmp).unwrap(); // an existing folder is fine
        out.write_json(&serde_json::json!({"seed": 1})).unwrap();
        out.write_markdown(&md_table(&["a", "b"], &[vec!["1".into(), "2".into()]])).unwrap();
        let ci = Ci { estimate: 2.0, lo: 1.5, hi: 2.5, confidence: 0.95, resamples: 10, runs: 3 };
        plot(
            &out.path("cdf.svg"),
            "RTT",
            "ms",
            "fraction",
            &[Series::cdf("h3", &[1.0, 2.0, 3.0]), Series::with_ci("p99", &[(0.0, ci), (1.0, ci)])],
        )
        .unwrap();
        let svg = std::fs::read_to_string(out.path("cdf.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("RTT") && svg.contains("h3"));
        assert!(std::fs::read_to_string(out.path("report.md")).unwrap().contains("| 1 | 2 |"));
        assert!(versions().crates.contains_key("quinn"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn findings_say_only_what_the_interval_supports() {
        // H2 − H3 per run: clearly positive → "H3 lower".
        let pos: Vec<f64> = (0..20).map(|r| 40.0 + f64::from(r % 5)).collect();
        let f = Finding::paired("p50 at 2% loss", "HTTP/2", "HTTP/3", "ms", &pos, 7);
        assert_eq!(f.verdict, Verdict::BLower, "{f:?}");
        assert!(f.sentence.contains("HTTP/3 lower than HTTP/2 by 42.0 ms"), "{}", f.sentence);
        // Differences around 0: the interval spans 0 and the sentence says so.
        let mixed: Vec<f64> = (0..20).map(|r| if r % 2 == 0 { 30.0 } else { -30.0 } + f64::from(r)).collect();
        let f = Finding::paired("p50 at 2% loss", "HTTP/2", "HTTP/3", "ms", &mixed, 7);
        assert_eq!(f.verdict, Verdict::NotResolved, "{f:?}");
        assert!(f.sentence.contains("no difference resolved") && f.sentence.contains("spans 0"), "{}", f.sentence);
        // Clearly negative → "HTTP/2 lower"; one run resolves nothing.
        let neg: Vec<f64> = pos.iter().map(|d| -d).collect();
        assert_eq!(Finding::paired("x", "a", "b", "ms", &neg, 1).verdict, Verdict::ALower);
        assert_eq!(Finding::paired("x", "a", "b", "ms", &[5.0], 1).verdict, Verdict::NotResolved);
        // An interval touching 0 is not resolved.
        let ci = Ci { estimate: 1.0, lo: 0.0, hi: 2.0, confidence: 0.95, resamples: 10, runs: 9 };
        assert_eq!(Verdict::of(&ci), Verdict::NotResolved);
    }

    #[test]
    fn paired_interval_is_the_sign_test_interval() {
        // n = 20 at 95%: 2·P(B ≤ 5) = 0.041 ≤ 0.05 < 2·P(B ≤ 6) = 0.115, so [d(6), d(15)].
        let d: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let ci = paired_ci(&d, 0.95, 0);
        assert_eq!((ci.lo, ci.hi, ci.runs), (6.0, 15.0, 20));
        assert!((ci.confidence - 0.9586).abs() < 1e-3, "{ci:?}");
        assert_eq!(ci.estimate, 10.5);
        // Six runs all the same sign: [min, max] covers 96.9%, resolved.
        let six = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let ci = paired_ci(&six, 0.95, 0);
        assert_eq!((ci.lo, ci.hi), (3.0, 8.0));
        assert_eq!(Verdict::of(&ci), Verdict::BLower);
        // Five runs cannot reach 95% whatever they say: not resolved, and the sentence says why.
        let f = Finding::paired("x", "a", "b", "ms", &six[..5], 0);
        assert_eq!(f.verdict, Verdict::NotResolved);
        assert!(f.sentence.contains("5 runs cannot give a 95% interval"), "{}", f.sentence);
        // No run at all (every block left out): said plainly, no NaN.
        let f = Finding::paired("x", "a", "b", "ms", &[], 0);
        assert_eq!(f.verdict, Verdict::NotResolved);
        assert!(f.sentence.contains("no run to compare") && !f.sentence.contains("NaN"), "{}", f.sentence);
        // Runs without the measure (NaN) are left out.
        let mut with_nan = six.to_vec();
        with_nan.push(f64::NAN);
        assert_eq!(paired_ci(&with_nan, 0.95, 0).runs, 6);
    }
}
