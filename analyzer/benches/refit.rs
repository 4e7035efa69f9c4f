//! Refit benchmark: the paper's design at growing size, refit from sufficient statistics, side
//! by side with lme4's `lmer` on the same data when `Rscript` (with lme4) is installed.
//!
//! Run: `cargo bench -p careers-analyzer --bench refit`. Environment:
//! - `CAREERS_BENCH_SIZES`: comma-separated replication counts per (respondent, language, item)
//!   cell, default `20,200,2084` (9,600 / 96,000 / 1,000,320 rows with 4 respondents), plus an
//!   8-respondent design with 200 replications (192,000 rows) as in the issue;
//! - `CAREERS_BENCH_R_MAX_ROWS`: largest data set handed to lmer (default 200000; lmer at a
//!   million rows takes minutes);
//! - `CAREERS_BENCH_NO_R=1`: skip lmer.
//!
//! Prints times (medians of 5 cold fits and 11 warm refits), never asserts them. "warm refit" is
//! what the analyzer does on new data: rebuild the blocks from the statistics and refit starting
//! from the theta fitted before the last 1% of the rows arrived. "crit diff" is the relative
//! difference between lmer's REML criterion and ours (lmer's default optimiser stops earlier).
//!
//! Rows are generated one at a time and streamed into the statistics (and, for lmer, into a CSV
//! file), never held in memory, so the process's resident memory shows what the statistics
//! cost: "peak RSS" is the process's high-water mark after each size (sizes run from small to
//! large, so a flat column means memory does not grow with rows). The last lines print the
//! issue's two targets as ratios.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use careers_analyzer::stats::{Design, FitOptions, Formula, SufficientStats, fit};

const FORMULA: &str = "rating ~ scale * respondent * language + (1 | item) + (1 | item:respondent)";
const COLUMNS: [&str; 5] = ["respondent", "language", "scale", "item", "instrument"];
const SCALES: [&str; 6] = ["R", "I", "A", "S", "E", "C"];

/// A small deterministic generator (SplitMix64 + Box-Muller): no RNG crate needed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// The paper's design: respondents x languages x 60 items (10 per RIASEC area) x replications,
/// each row handed to `row` as it is drawn (levels in [`COLUMNS`] order, then the rating).
/// Replications vary slowest, as responses arrive in a study.
fn simulate(respondents: usize, reps: usize, seed: u64, mut row: impl FnMut(&[&str; 5], f64)) {
    let mut rng = Rng(seed);
    let item_eff: Vec<f64> = (0..60).map(|_| 0.5 * rng.normal()).collect();
    let scale_eff = [-0.4, 0.1, 0.5, 0.6, -0.1, -0.5];
    let names: Vec<String> = (0..respondents).map(|r| format!("m{r}")).collect();
    let items: Vec<String> = (0..60).map(|i| format!("item{i:02}")).collect();
    // Cell means first, so the stream below needs no per-row allocation.
    let mut means = Vec::with_capacity(respondents * 2 * 60);
    for _ in 0..respondents {
        let resp_eff = 0.3 * rng.normal();
        for lang in 0..2 {
            let lang_eff = if lang == 0 { 0.0 } else { 0.2 * rng.normal() };
            for (i, ie) in item_eff.iter().enumerate() {
                let ir = 0.4 * rng.normal();
                means.push(3.0 + scale_eff[i / 10] + resp_eff + lang_eff + ie + ir);
            }
        }
    }
    for _ in 0..reps {
        for (cell, mu) in means.iter().enumerate() {
            let (r, lang, i) = (cell / 120, (cell / 60) % 2, cell % 60);
            let y = (mu + 0.8 * rng.normal()).round().clamp(1.0, 5.0);
            let levels = [
                names[r].as_str(),
                ["en", "zh"][lang],
                SCALES[i / 10],
                items[i].as_str(),
                "onet-ip-sf",
            ];
            row(&levels, y);
        }
    }
}

/// The process's resident-memory high-water mark in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rscript_available() -> bool {
    std::env::var("CAREERS_BENCH_NO_R").is_err()
        && Command::new("Rscript")
            .args(["-e", "suppressMessages(library(lme4))"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// Times `lmer` on the simulated rows (streamed to a CSV file first); returns (seconds, REML
/// criterion).
fn time_lmer(respondents: usize, reps: usize, seed: u64) -> Option<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("careers-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let csv = dir.join("data.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).ok()?);
    writeln!(f, "respondent,language,scale,item,instrument,rating").ok()?;
    let mut ok = true;
    simulate(respondents, reps, seed, |levels, y| {
        ok &= writeln!(f, "{},{y}", levels.join(",")).is_ok();
    });
    f.flush().ok()?;
    drop(f);
    if !ok {
        return None;
    }
    let script = format!(
        "suppressMessages(library(lme4)); d <- read.csv('{}'); \
         t <- system.time(m <- lmer({FORMULA}, data = d))[['elapsed']]; \
         cat(t, REMLcrit(m), '\\n')",
        csv.display()
    );
    let out = Command::new("Rscript")
        .args(["-e", &script])
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .filter_map(|t| t.parse::<f64>().ok());
    Some((it.next()?, it.next()?))
}

fn main() {
    let sizes: Vec<(usize, usize)> = match std::env::var("CAREERS_BENCH_SIZES") {
        Ok(s) => s
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .map(|reps| (4, reps))
            .collect(),
        Err(_) => vec![(4, 20), (4, 200), (8, 200), (4, 2084)],
    };
    let r_max: usize = std::env::var("CAREERS_BENCH_R_MAX_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let with_r = rscript_available();
    let formula = match Formula::parse(FORMULA) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    println!("formula: {FORMULA}");
    println!(
        "{:>9} {:>6} {:>10} {:>9} {:>14} {:>15} {:>10} {:>12} {:>9} {:>9}",
        "rows",
        "cells",
        "ingest ms",
        "build ms",
        "cold fit ms",
        "warm refit ms",
        "lmer s",
        "lmer/warm",
        "crit diff",
        "peak RSS"
    );
    // (rows, warm refit, lmer seconds) per size, for the target lines.
    let mut results: Vec<(usize, Duration, Option<f64>)> = Vec::new();
    for (resp, reps) in sizes {
        let seed = 20_240_710 + reps as u64;
        let total = resp * 2 * 60 * reps;
        // The last 1% arrives after the previous fit: the warm refit includes it.
        let split = total - total / 100;
        let mut stats = SufficientStats::new("rating", &COLUMNS);
        let mut late = SufficientStats::new("rating", &COLUMNS);
        let mut seen = 0usize;
        let mut failed = None;
        let t0 = Instant::now();
        simulate(resp, reps, seed, |levels, y| {
            let target = if seen < split { &mut stats } else { &mut late };
            seen += 1;
            if let Err(e) = target.add(levels, y) {
                failed.get_or_insert(e);
            }
        });
        let ingest = t0.elapsed();
        if let Some(e) = failed {
            eprintln!("{e}");
            return;
        }
        let previous =
            Design::build(&stats, &formula).and_then(|d| fit(&d, &FitOptions::default()));
        if let Err(e) = stats.merge(&late) {
            eprintln!("{e}");
            return;
        }
        let t1 = Instant::now();
        let design = match Design::build(&stats, &formula) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{e}");
                return;
            }
        };
        let build = t1.elapsed();
        // Median of a few repetitions: the machine is shared and single runs are noisy.
        let mut cold_times = Vec::new();
        let mut cold = None;
        for _ in 0..5 {
            let t = Instant::now();
            match fit(&design, &FitOptions::default()) {
                Ok(f) => cold = Some(f),
                Err(e) => {
                    eprintln!("{e}");
                    return;
                }
            }
            cold_times.push(t.elapsed());
        }
        let Some(cold) = cold else { return };
        let cold_t = median(&mut cold_times);
        let mut warm_times = Vec::new();
        let mut warm = None;
        for _ in 0..11 {
            let t = Instant::now();
            let refit = Design::build(&stats, &formula).and_then(|d| {
                fit(
                    &d,
                    &FitOptions {
                        start_theta: previous.as_ref().ok().map(|p| p.theta.clone()),
                        ..FitOptions::default()
                    },
                )
            });
            warm_times.push(t.elapsed());
            warm = refit.ok();
        }
        let warm_t = median(&mut warm_times);
        let Some(warm) = warm else {
            eprintln!("warm fit failed");
            return;
        };
        let peak = peak_rss_mib();
        let mut lmer_secs = None;
        let (lmer_s, ratio, diff) = if with_r && total <= r_max {
            match time_lmer(resp, reps, seed) {
                Some((secs, crit)) => {
                    lmer_secs = Some(secs);
                    (
                        format!("{secs:.2}"),
                        format!("{:.0}x", secs / warm_t.as_secs_f64()),
                        format!("{:.1e}", (crit - cold.criterion).abs() / crit.abs()),
                    )
                }
                None => ("failed".into(), "-".into(), "-".into()),
            }
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        results.push((total, warm_t, lmer_secs));
        println!(
            "{:>9} {:>6} {:>10.1} {:>9.2} {:>9.1} ({:>3}) {:>10.1} ({:>3}) {:>10} {:>12} {:>9} {:>5.1} MiB",
            total,
            stats.n_cells(),
            ms(ingest),
            ms(build),
            ms(cold_t),
            cold.evaluations,
            ms(warm_t),
            warm.evaluations,
            lmer_s,
            ratio,
            diff,
            peak.unwrap_or(f64::NAN)
        );
    }
    // The targets, as ratios (figures, not assertions).
    let at = |rows: usize| results.iter().find(|r| r.0 == rows);
    if let Some((_, warm, Some(lmer))) = at(96_000) {
        println!(
            "target: warm refit at 96,000 rows >= 100x faster than lmer: {:.0}x",
            lmer / warm.as_secs_f64()
        );
    }
    if let (Some(small), Some(large)) = (
        results.iter().filter(|r| r.0 <= 20_000).max_by_key(|r| r.0),
        results
            .iter()
            .filter(|r| r.0 >= 1_000_000)
            .min_by_key(|r| r.0),
    ) {
        println!(
            "target: warm refit at {} rows within 1.5x of {} rows: {:.2}x ({:.1} ms vs {:.1} ms)",
            large.0,
            small.0,
            large.1.as_secs_f64() / small.1.as_secs_f64(),
            ms(large.1),
            ms(small.1)
        );
    }
    println!(
        "memory: the statistics are one entry per distinct respondent x language x scale x item \
         x instrument cell, whatever the rows; peak RSS above is the whole process"
    );
}
