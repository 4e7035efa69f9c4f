//! The offline `fit` command: read a CSV file, fit a mixed model, print JSON or a summary.
//!
//! This is also how fits are checked against R: `analyzer/tests/reference/` holds datasets and
//! lme4's results for them. The CSV needs a header; the response column must be numeric, every
//! other column the formula names is read as text (a column whose values all parse as numbers is
//! a numeric covariate where the formula uses it as a predictor, as in R).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::stats::{
    self, Design, FitOptions, Formula, LmmFit, Satterthwaite, StatsError, SufficientStats,
};

/// Arguments of `careers-analyzer fit`.
#[derive(Debug, Clone)]
pub struct FitArgs {
    /// CSV file with a header.
    pub data: PathBuf,
    /// lme4 formula.
    pub formula: String,
    /// ML instead of REML.
    pub ml: bool,
    /// Estimated marginal means over these factors (`a:b`).
    pub emmeans: Option<String>,
    /// Print JSON instead of a readable summary.
    pub json: bool,
}

/// What can go wrong in `fit`; Display is one line.
#[derive(Debug, thiserror::Error)]
pub enum FitCommandError {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// File.
        path: String,
        /// Reason.
        message: String,
    },
    /// No header or no rows.
    #[error("{0} has no data rows")]
    Empty(String),
    /// Every row's response is missing (empty or NA).
    #[error("{path}: every row's {column} is missing (empty or NA)")]
    NoResponses {
        /// The file.
        path: String,
        /// The response column.
        column: String,
    },
    /// The formula names a column the file does not have.
    #[error("{path} has no column named {column:?}")]
    MissingColumn {
        /// File.
        path: String,
        /// Column.
        column: String,
    },
    /// A response value that is not a number.
    #[error("response {column:?} is not numeric on line {line}: {value:?}")]
    NonNumericResponse {
        /// Column.
        column: String,
        /// 1-based line of the file.
        line: u64,
        /// The value.
        value: String,
    },
    /// The formula is invalid or unsupported.
    #[error("{0}")]
    Formula(String),
    /// The model cannot be fitted.
    #[error("fit failed: {0}")]
    Fit(String),
}

impl From<StatsError> for FitCommandError {
    fn from(e: StatsError) -> Self {
        match e {
            StatsError::Formula(_) | StatsError::Emmeans(_) => {
                FitCommandError::Formula(e.to_string())
            }
            other => FitCommandError::Fit(other.to_string()),
        }
    }
}

fn open_csv(path: &Path) -> Result<csv::Reader<std::fs::File>, FitCommandError> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_path(path)
        .map_err(|e| FitCommandError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// A missing numeric value as `read.csv` sees one: an empty field or `NA`.
fn is_missing(v: &str) -> bool {
    v.is_empty() || v == "NA"
}

/// Reads the columns of `formula` from a CSV file into sufficient statistics.
///
/// Missing values are read as R's `read.csv` reads them and dropped as `lmer`'s default
/// `na.omit` drops them: a row is left out when its response is empty or `NA`, when a factor
/// it uses is `NA`, or when a numeric predictor it uses is empty or `NA`.
/// A predictor column whose values all parse as numbers, missing values aside (R's rule), and
/// that is not a grouping factor becomes a covariate kept as per-cell moments, so a continuous
/// covariate does not make every row its own cell; every other column is a factor. This costs
/// a first pass over the file to find out.
pub fn load_csv(path: &Path, formula: &Formula) -> Result<SufficientStats, FitCommandError> {
    let shown = path.display().to_string();
    let read_err = |e: &dyn std::fmt::Display| FitCommandError::Read {
        path: shown.clone(),
        message: e.to_string(),
    };
    let mut reader = open_csv(path)?;
    let header = reader.headers().map_err(|e| read_err(&e))?.clone();
    if header.is_empty() {
        return Err(FitCommandError::Empty(shown));
    }
    let find = |name: &str| -> Result<usize, FitCommandError> {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| FitCommandError::MissingColumn {
                path: shown.clone(),
                column: name.to_string(),
            })
    };
    let y_col = find(&formula.response)?;
    let vars = formula.variables();
    let cols: Vec<usize> = vars.iter().map(|v| find(v)).collect::<Result<_, _>>()?;
    // First pass: which predictor-only columns are numeric throughout?
    let grouping: Vec<bool> = vars
        .iter()
        .map(|v| formula.random.iter().any(|r| r.group.contains(v)))
        .collect();
    let mut numeric: Vec<bool> = grouping.iter().map(|g| !g).collect();
    let mut record = csv::StringRecord::new();
    let mut rows = 0u64;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => rows += 1,
            Err(e) => return Err(read_err(&e)),
        }
        for (k, &c) in cols.iter().enumerate() {
            if numeric[k] {
                let v = record.get(c).unwrap_or("").trim();
                numeric[k] = is_missing(v) || v.parse::<f64>().is_ok_and(f64::is_finite);
            }
        }
    }
    if rows == 0 {
        return Err(FitCommandError::Empty(shown));
    }
    let factor_idx: Vec<usize> = (0..vars.len()).filter(|&k| !numeric[k]).collect();
    let cov_idx: Vec<usize> = (0..vars.len()).filter(|&k| numeric[k]).collect();
    let factor_names: Vec<&str> = factor_idx.iter().map(|&k| vars[k].as_str()).collect();
    let cov_names: Vec<&str> = cov_idx.iter().map(|&k| vars[k].as_str()).collect();
    let mut stats = SufficientStats::with_covariates(&formula.response, &factor_names, &cov_names);
    let mut reader = open_csv(path)?;
    let mut xs = vec![0.0; cov_idx.len()];
    let mut used = 0u64;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(read_err(&e)),
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let raw = record.get(y_col).unwrap_or("").trim();
        let y: f64 = match raw.parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            // A missing response (empty or NA, as `careers-analyzer export`
            // writes for an invalid answer) drops the row, as R's na.omit.
            _ if raw.is_empty() || raw == "NA" => continue,
            _ => {
                return Err(FitCommandError::NonNumericResponse {
                    column: formula.response.clone(),
                    line,
                    value: raw.to_string(),
                });
            }
        };
        let mut complete = true;
        for (x, &k) in xs.iter_mut().zip(&cov_idx) {
            let v = record.get(cols[k]).unwrap_or("").trim();
            complete &= !is_missing(v);
            *x = v.parse::<f64>().unwrap_or(f64::NAN);
        }
        let levels: Vec<&str> = factor_idx
            .iter()
            .map(|&k| record.get(cols[k]).unwrap_or("").trim())
            .collect();
        // read.csv turns "NA" into a missing value in every column (an empty text field
        // stays the level "").
        complete &= !levels.contains(&"NA");
        if !complete {
            continue;
        }
        stats.add_with_covariates(&levels, &xs, y)?;
        used += 1;
    }
    if used == 0 {
        return Err(FitCommandError::NoResponses {
            path: shown,
            column: formula.response.clone(),
        });
    }
    Ok(stats)
}

/// JSON output of the command (field names are the contract of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// Formula as given.
    pub formula: String,
    /// REML or ML.
    pub reml: bool,
    /// Number of responses.
    pub n: u64,
    /// Whether the optimiser converged.
    pub converged: bool,
    /// Whether the fit is singular.
    pub singular: bool,
    /// What the optimiser reported, and how many deviance evaluations it took.
    pub optimizer: OptimizerJson,
    /// REML criterion or ML deviance.
    pub criterion: f64,
    /// Log-likelihood.
    pub loglik: f64,
    /// AIC.
    pub aic: f64,
    /// BIC.
    pub bic: f64,
    /// Residual SD.
    pub sigma: f64,
    /// Theta.
    pub theta: Vec<f64>,
    /// Fixed effects.
    pub fixed: Vec<FixedRow>,
    /// Variance components and correlations.
    pub random: Vec<RandomRow>,
    /// Type III tests.
    pub anova: Vec<AnovaJson>,
    /// Marginal means, when asked for (`null` otherwise).
    pub emmeans: Option<EmmeansJson>,
    /// Aliased columns dropped.
    pub dropped_columns: Vec<String>,
    /// Conditional modes of the random effects (lme4's `ranef`), per grouping factor.
    pub ranef: Vec<RanefJson>,
}

/// The optimiser's report.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizerJson {
    /// BOBYQA's stopping message.
    pub message: String,
    /// Deviance evaluations.
    pub evaluations: usize,
}

/// Conditional modes of one grouping factor: `values[level]` is a map coefficient -> mode.
#[derive(Debug, Clone, Serialize)]
pub struct RanefJson {
    /// Grouping factor.
    pub group: String,
    /// Level -> coefficient -> conditional mode.
    pub levels: serde_json::Map<String, serde_json::Value>,
}

/// One fixed effect.
#[derive(Debug, Clone, Serialize)]
pub struct FixedRow {
    /// Column name.
    pub term: String,
    /// Estimate.
    pub estimate: f64,
    /// Standard error.
    pub se: f64,
    /// Satterthwaite df.
    pub df: Option<f64>,
    /// t value.
    pub t: f64,
    /// p value.
    pub p: Option<f64>,
}

/// A variance component (`sd`, `variance`) or a correlation (`term2`, `corr`).
#[derive(Debug, Clone, Serialize)]
pub struct RandomRow {
    /// Grouping factor or `Residual`.
    pub group: String,
    /// Coefficient.
    pub term: String,
    /// Second coefficient of a correlation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term2: Option<String>,
    /// SD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
    /// Variance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    /// Correlation: present on correlation rows only, `null` there when it
    /// is not defined (a zero SD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corr: Option<Option<f64>>,
}

/// One Type III test.
#[derive(Debug, Clone, Serialize)]
pub struct AnovaJson {
    /// Term label.
    pub term: String,
    /// Numerator df.
    pub num_df: f64,
    /// Denominator df.
    pub den_df: f64,
    /// F value.
    pub f: f64,
    /// p value.
    pub p: f64,
}

/// Marginal means and their pairwise comparisons.
#[derive(Debug, Clone, Serialize)]
pub struct EmmeansJson {
    /// `a:b`.
    pub spec: String,
    /// One row per level combination.
    pub rows: Vec<EmmJson>,
    /// Pairwise differences, Tukey-adjusted.
    pub contrasts: Vec<ContrastJson>,
}

/// One marginal mean (`None` where not estimable).
#[derive(Debug, Clone, Serialize)]
pub struct EmmJson {
    /// Factor -> level.
    pub levels: serde_json::Map<String, serde_json::Value>,
    /// Mean.
    pub emmean: Option<f64>,
    /// SE.
    pub se: Option<f64>,
    /// df.
    pub df: Option<f64>,
    /// Lower 95% limit.
    pub lower: Option<f64>,
    /// Upper 95% limit.
    pub upper: Option<f64>,
}

/// One pairwise contrast.
#[derive(Debug, Clone, Serialize)]
pub struct ContrastJson {
    /// emmeans' label (`A en - C en`).
    pub contrast: String,
    /// Difference.
    pub estimate: Option<f64>,
    /// SE.
    pub se: Option<f64>,
    /// df.
    pub df: Option<f64>,
    /// t ratio.
    pub t: Option<f64>,
    /// Tukey-adjusted p.
    pub p: Option<f64>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Fits and builds the report.
pub fn fit_report(args: &FitArgs) -> Result<FitReport, FitCommandError> {
    let formula = Formula::parse(&args.formula)?;
    let stats = load_csv(&args.data, &formula)?;
    let design = Design::build(&stats, &formula)?;
    let options = FitOptions {
        reml: !args.ml,
        ..FitOptions::default()
    };
    let fit = stats::fit(&design, &options)?;
    let satt = Satterthwaite::new(&design, &fit)?;
    let fixed = stats::fixed_effects(&fit, &satt)
        .into_iter()
        .map(|f| FixedRow {
            term: f.name,
            estimate: f.estimate,
            se: f.se,
            df: finite(f.df),
            t: f.t,
            p: finite(f.p),
        })
        .collect();
    let anova = stats::anova_type3(&design, &fit, &satt)?
        .into_iter()
        .map(|a| AnovaJson {
            term: a.term,
            num_df: a.num_df,
            den_df: a.den_df,
            f: a.f,
            p: a.p,
        })
        .collect();
    let emmeans = match &args.emmeans {
        None => None,
        Some(spec) => {
            let factors: Vec<&str> = spec.split(':').map(str::trim).collect();
            let emm = stats::emmeans(&design, &fit, &satt, &factors)?;
            let contrasts = stats::pairwise_tukey(&emm, &fit, &satt);
            Some(EmmeansJson {
                spec: spec.clone(),
                rows: emm
                    .rows
                    .iter()
                    .map(|r| EmmJson {
                        levels: emm
                            .factors
                            .iter()
                            .zip(&r.levels)
                            .map(|(f, l)| (f.clone(), serde_json::Value::String(l.clone())))
                            .collect(),
                        emmean: r.estimate,
                        se: r.se,
                        df: r.df,
                        lower: r.lower,
                        upper: r.upper,
                    })
                    .collect(),
                contrasts: contrasts
                    .into_iter()
                    .map(|c| ContrastJson {
                        contrast: c.label,
                        estimate: c.estimate,
                        se: c.se,
                        df: c.df,
                        t: c.t,
                        p: c.p,
                    })
                    .collect(),
            })
        }
    };
    Ok(FitReport {
        formula: args.formula.clone(),
        reml: fit.reml,
        n: stats.n(),
        converged: fit.converged,
        singular: fit.singular,
        criterion: fit.criterion,
        loglik: fit.loglik,
        aic: fit.aic,
        bic: fit.bic,
        sigma: fit.sigma,
        theta: fit.theta.clone(),
        fixed,
        random: random_rows(&fit),
        anova,
        emmeans,
        dropped_columns: fit.dropped_columns.clone(),
        optimizer: OptimizerJson {
            message: fit.message.clone(),
            evaluations: fit.evaluations,
        },
        ranef: fit
            .modes
            .iter()
            .map(|m| RanefJson {
                group: m.group.clone(),
                levels: m
                    .levels
                    .iter()
                    .zip(&m.values)
                    .map(|(level, values)| {
                        let coefs: serde_json::Map<String, serde_json::Value> = m
                            .terms
                            .iter()
                            .zip(values)
                            .map(|(t, v)| (t.clone(), serde_json::json!(v)))
                            .collect();
                        (level.clone(), serde_json::Value::Object(coefs))
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn random_rows(fit: &LmmFit) -> Vec<RandomRow> {
    let mut out = Vec::new();
    for c in &fit.components {
        for (t, sd) in c.terms.iter().zip(&c.sd) {
            out.push(RandomRow {
                group: c.group.clone(),
                term: t.clone(),
                term2: None,
                sd: Some(*sd),
                variance: Some(sd * sd),
                corr: None,
            });
        }
        for &(a, b, rho) in &c.corr {
            out.push(RandomRow {
                group: c.group.clone(),
                term: c.terms[b].clone(),
                term2: Some(c.terms[a].clone()),
                sd: None,
                variance: None,
                corr: Some(finite(rho)),
            });
        }
    }
    out.push(RandomRow {
        group: "Residual".into(),
        term: String::new(),
        term2: None,
        sd: Some(fit.sigma),
        variance: Some(fit.sigma * fit.sigma),
        corr: None,
    });
    out
}

/// Runs the command and returns what it prints.
pub fn run_fit(args: &FitArgs) -> Result<String, FitCommandError> {
    let report = fit_report(args)?;
    if args.json {
        return serde_json::to_string_pretty(&report)
            .map_err(|e| FitCommandError::Fit(e.to_string()));
    }
    Ok(summary_text(&report))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "NA".to_string(), |x| format!("{x:.4}"))
}

/// A readable summary in the spirit of `summary(lmer(...))`.
fn summary_text(r: &FitReport) -> String {
    let mut s = String::new();
    let method = if r.reml { "REML" } else { "maximum likelihood" };
    let _ = writeln!(
        s,
        "Linear mixed model fit by {method} (Satterthwaite's method)"
    );
    let _ = writeln!(s, "Formula: {}", r.formula);
    let crit = if r.reml { "REML criterion" } else { "deviance" };
    let _ = writeln!(
        s,
        "{crit}: {:.4}   logLik: {:.4}   AIC: {:.4}   BIC: {:.4}   n: {}",
        r.criterion, r.loglik, r.aic, r.bic, r.n
    );
    if !r.converged {
        let _ = writeln!(
            s,
            "WARNING: the optimiser did not converge ({}, {} evaluations)",
            r.optimizer.message, r.optimizer.evaluations
        );
    }
    if r.singular {
        let _ = writeln!(s, "boundary (singular) fit");
    }
    let _ = writeln!(s, "\nRandom effects:");
    let _ = writeln!(
        s,
        " {:<20} {:<20} {:>12} {:>12}",
        "Groups", "Name", "Variance", "Std.Dev."
    );
    for row in &r.random {
        match (row.sd, row.corr.flatten()) {
            (Some(sd), _) => {
                let _ = writeln!(
                    s,
                    " {:<20} {:<20} {:>12.6} {:>12.6}",
                    row.group,
                    row.term,
                    sd * sd,
                    sd
                );
            }
            (None, corr) => {
                let _ = writeln!(
                    s,
                    " {:<20} corr({}, {}) = {}",
                    row.group,
                    row.term,
                    row.term2.clone().unwrap_or_default(),
                    fmt_opt(corr)
                );
            }
        }
    }
    let _ = writeln!(s, "\nFixed effects:");
    let _ = writeln!(
        s,
        " {:<36} {:>12} {:>11} {:>10} {:>9} {:>11}",
        "", "Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"
    );
    for f in &r.fixed {
        let _ = writeln!(
            s,
            " {:<36} {:>12.6} {:>11.6} {:>10} {:>9.3} {:>11}",
            f.term,
            f.estimate,
            f.se,
            fmt_opt(f.df),
            f.t,
            f.p.map_or("NA".into(), |p| format!("{p:.4e}"))
        );
    }
    if !r.dropped_columns.is_empty() {
        let _ = writeln!(
            s,
            "fixed-effect model matrix is rank deficient so dropping {} columns: {}",
            r.dropped_columns.len(),
            r.dropped_columns.join(", ")
        );
    }
    if !r.anova.is_empty() {
        let _ = writeln!(
            s,
            "\nType III Analysis of Variance Table with Satterthwaite's method"
        );
        let _ = writeln!(
            s,
            " {:<36} {:>6} {:>10} {:>10} {:>11}",
            "", "NumDF", "DenDF", "F value", "Pr(>F)"
        );
        for a in &r.anova {
            let _ = writeln!(
                s,
                " {:<36} {:>6} {:>10.3} {:>10.4} {:>11.4e}",
                a.term, a.num_df, a.den_df, a.f, a.p
            );
        }
    }
    if let Some(e) = &r.emmeans {
        let _ = writeln!(s, "\nEstimated marginal means ({}):", e.spec);
        for row in &e.rows {
            let lv: Vec<String> = row
                .levels
                .values()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect();
            let _ = writeln!(
                s,
                " {:<24} emmean {:>10}  SE {:>8}  df {:>9}  95% CI [{}, {}]",
                lv.join(" "),
                fmt_opt(row.emmean),
                fmt_opt(row.se),
                fmt_opt(row.df),
                fmt_opt(row.lower),
                fmt_opt(row.upper)
            );
        }
        let _ = writeln!(s, "\nPairwise contrasts (Tukey):");
        for c in &e.contrasts {
            let _ = writeln!(
                s,
                " {:<32} {:>10} SE {:>8} df {:>9} t {:>8} p {}",
                c.contrast,
                fmt_opt(c.estimate),
                fmt_opt(c.se),
                fmt_opt(c.df),
                fmt_opt(c.t),
                fmt_opt(c.p)
            );
        }
    }
    s
}
