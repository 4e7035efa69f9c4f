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
//! Prints times (medians of 3 cold fits and 5 warm refits), never asserts them. "warm refit" is
//! what the analyzer does on new data: rebuild the blocks from the statistics and refit starting
//! from the theta fitted before the last 1% of the rows arrived. "crit diff" is the relative
//! difference between lmer's REML criterion and ours (lmer's default optimiser stops earlier).

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

struct Row {
    levels: [String; 5],
    rating: f64,
}

/// The paper's design: respondents x languages x 60 items (10 per RIASEC area) x replications.
fn simulate(respondents: usize, reps: usize, seed: u64) -> Vec<Row> {
    let mut rng = Rng(seed);
    let item_eff: Vec<f64> = (0..60).map(|_| 0.5 * rng.normal()).collect();
    let scale_eff = [-0.4, 0.1, 0.5, 0.6, -0.1, -0.5];
    let mut rows = Vec::with_capacity(respondents * 2 * 60 * reps);
    for r in 0..respondents {
        let resp_eff = 0.3 * rng.normal();
        for lang in ["en", "zh"] {
            let lang_eff = if lang == "en" {
                0.0
            } else {
                0.2 * rng.normal()
            };
            for (i, ie) in item_eff.iter().enumerate() {
                let ir = 0.4 * rng.normal();
                let scale = SCALES[i / 10];
                let mu = 3.0 + scale_eff[i / 10] + resp_eff + lang_eff + ie + ir;
                for _ in 0..reps {
                    let y = (mu + 0.8 * rng.normal()).round().clamp(1.0, 5.0);
                    rows.push(Row {
                        levels: [
                            format!("m{r}"),
                            lang.to_string(),
                            scale.to_string(),
                            format!("item{i:02}"),
                            "onet-ip-sf".to_string(),
                        ],
                        rating: y,
                    });
                }
            }
        }
    }
    rows
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

/// Times `lmer` on the rows; returns (seconds, REML criterion).
fn time_lmer(rows: &[Row]) -> Option<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("careers-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let csv = dir.join("data.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).ok()?);
    writeln!(f, "respondent,language,scale,item,instrument,rating").ok()?;
    for r in rows {
        writeln!(f, "{},{}", r.levels.join(","), r.rating).ok()?;
    }
    drop(f);
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
        "{:>9} {:>6} {:>10} {:>9} {:>14} {:>15} {:>10} {:>12} {:>9}",
        "rows",
        "cells",
        "ingest ms",
        "build ms",
        "cold fit ms",
        "warm refit ms",
        "lmer s",
        "lmer/warm",
        "crit diff"
    );
    let mut baseline_warm = None;
    for (resp, reps) in sizes {
        let rows = simulate(resp, reps, 20_240_710 + reps as u64);
        // The last 1% arrives after the previous fit: the warm refit includes it.
        let split = rows.len() - rows.len() / 100;
        let t0 = Instant::now();
        let mut stats = SufficientStats::new("rating", &COLUMNS);
        for r in &rows[..split] {
            let l: [&str; 5] = [
                &r.levels[0],
                &r.levels[1],
                &r.levels[2],
                &r.levels[3],
                &r.levels[4],
            ];
            if let Err(e) = stats.add(&l, r.rating) {
                eprintln!("{e}");
                return;
            }
        }
        let ingest = t0.elapsed();
        let previous =
            Design::build(&stats, &formula).and_then(|d| fit(&d, &FitOptions::default()));
        for r in &rows[split..] {
            let l: [&str; 5] = [
                &r.levels[0],
                &r.levels[1],
                &r.levels[2],
                &r.levels[3],
                &r.levels[4],
            ];
            if let Err(e) = stats.add(&l, r.rating) {
                eprintln!("{e}");
                return;
            }
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
        for _ in 0..3 {
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
        for _ in 0..5 {
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
        baseline_warm.get_or_insert(warm_t);
        let (lmer_s, ratio, diff) = if with_r && rows.len() <= r_max {
            match time_lmer(&rows) {
                Some((secs, crit)) => (
                    format!("{secs:.2}"),
                    format!("{:.0}x", secs / warm_t.as_secs_f64()),
                    format!("{:.1e}", (crit - cold.criterion).abs() / crit.abs()),
                ),
                None => ("failed".into(), "-".into(), "-".into()),
            }
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        println!(
            "{:>9} {:>6} {:>10.1} {:>9.2} {:>9.1} ({:>3}) {:>10.1} ({:>3}) {:>10} {:>12} {:>9}",
            rows.len(),
            stats.n_cells(),
            ms(ingest),
            ms(build),
            ms(cold_t),
            cold.evaluations,
            ms(warm_t),
            warm.evaluations,
            lmer_s,
            ratio,
            diff
        );
    }
    if let Some(b) = baseline_warm {
        println!(
            "warm refit time is flat in rows: memory is the cell table (one entry per distinct \
             respondent x language x scale x item x instrument), first size's warm refit {:.1} ms",
            ms(b)
        );
    }
}
