//! The mixed-model engine: incremental REML/ML fits of linear mixed models that match lme4,
//! with lmerTest's Satterthwaite inference and emmeans' marginal means.
//!
//! This module is pure numerics. It owns the formula language, the sufficient statistics, the
//! fit and the inference on top of it, and it must never do I/O, spawn tasks, or know about
//! gRPC or SQL: the analyzer service feeds it responses and turns its plain structs into
//! messages, the offline `fit` command feeds it a CSV file.
//!
//! # How a fit is computed
//!
//! A linear mixed model `y = X beta + Z b + e` depends on the data only through the
//! cross-products of `[Z X y]`. With categorical predictors these are sums over *cells*
//! (distinct combinations of the columns' levels) of the count, the sum of y and the sum of y^2;
//! with continuous covariates, of the small moment matrix of `[1 x y]`. [`SufficientStats`]
//! keeps exactly that: one [`design::Moments`] per cell (count, means, centred cross products,
//! so nothing is lost to cancellation), updated in O(1) per response, mergeable, open to new
//! levels at any time. Its size is bounded by the design (items x respondents x languages), not
//! by the number of responses, so a refit costs the same at ten thousand or ten million rows.
//!
//! [`Design::build`] collapses the cells onto the variables of a [`Formula`] (lme4 syntax:
//! `rating ~ scale * respondent * language + (1 | item) + (1 | item:respondent)`), creates the
//! fixed-effect columns with R's treatment contrasts and names, drops aliased columns as lme4
//! does (an empty respondent x language cell), and accumulates the blocks: the first (largest)
//! random-effects term's `Z1'Z1` as per-level blocks with sparse cross products, everything else
//! (`Z2.., X, y`) as one small dense matrix.
//!
//! [`fit`] minimises lme4's profiled REML criterion (or ML deviance) over theta, the relative
//! covariance factors, with BOBYQA (the `bobyqa` crate), starting from a previous theta when
//! given one. Each evaluation is a blocked Cholesky factorisation (faer for the dense part), and
//! the criterion is computed as lme4 computes it, so the results agree with lme4 to the last
//! digits the optimiser resolves. The [`LmmFit`] holds fixed effects with their covariance,
//! variance components, log-likelihood, AIC, BIC, conditional modes and a convergence and
//! singularity report.
//!
//! Inference follows lmerTest and emmeans: [`Satterthwaite`] holds the numerical Hessian of the
//! deviance in (theta, sigma) and the Jacobian of the covariance of beta, from which any linear
//! contrast gets its Satterthwaite degrees of freedom; [`anova_type3`] builds lmerTest's Type III
//! hypotheses; [`emmeans`] averages predictions over the reference grid with equal weights and
//! [`pairwise_tukey`] compares them with the studentized range distribution ([`tukey`]).
//!
//! # Public API, as the analyzer uses it
//!
//! ```text
//! let mut stats = SufficientStats::new("rating", &["respondent", "language", "scale", "item", "instrument"]);
//! stats.add(&["gpt35", "en", "S", "item07", "onet-ip-sf"], 4.0)?;          // O(1), any order
//! let id = stats.level_id(0, "gpt35")?;                                    // or intern once and
//! stats.add_ids(&[id, en, s, item07, sf], &[], 4.0)?;                      // add by level ids
//! stats.merge(&other_stats)?;                                              // same columns
//! // Continuous covariates as moments: SufficientStats::with_covariates("y", &["g"], &["x"])
//! // and add_with_covariates(&["g1"], &[x], y).
//! let formula = Formula::parse("rating ~ scale * respondent * language + (1 | item) + (1 | item:respondent)")?;
//! let design = Design::build(&stats, &formula)?;                           // cost ~ number of cells
//! let fit = fit(&design, &FitOptions { start_theta: previous.map(|f| f.theta.clone()), ..FitOptions::default() })?;
//! let satt = Satterthwaite::new(&design, &fit)?;                           // numerical derivatives
//! let coefs: Vec<FixedEffect> = fixed_effects(&fit, &satt);
//! let table: Vec<AnovaRow> = anova_type3(&design, &fit, &satt)?;
//! let emm: Emmeans = emmeans(&design, &fit, &satt, &["scale", "language"])?;
//! let pairs: Vec<Contrast> = pairwise_tukey(&emm, &fit, &satt);
//! ```
//!
//! Everything returned is a plain struct with public fields; nothing borrows the statistics.

// Dense linear algebra on small blocks reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

pub mod design;
pub mod emmeans;
pub mod formula;
pub mod lmm;
pub mod satterthwaite;
pub mod tukey;

pub use design::{Design, Moments, SufficientStats};
pub use emmeans::{Contrast, EmmRow, Emmeans, emmeans, pairwise_tukey};
pub use formula::{Formula, RandomTerm};
pub use lmm::{ConditionalModes, FitOptions, LmmFit, VarianceComponent, fit, fit_at};
pub use satterthwaite::{
    AnovaRow, Contrast1D, FixedEffect, Satterthwaite, anova_type3, fixed_effects,
};

/// Errors of the engine. Each message is one line naming what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// The formula cannot be parsed or uses something unsupported.
    #[error("formula error: {0}")]
    Formula(String),
    /// The formula names a column the data does not have.
    #[error("no column named {0:?}")]
    MissingColumn(String),
    /// `add` got the wrong number of levels.
    #[error("expected {expected} levels, got {got}")]
    Arity {
        /// Number of columns.
        expected: usize,
        /// Number given.
        got: usize,
    },
    /// A response that is NaN or infinite.
    #[error("the response {0} is not a finite number")]
    NonFinite(f64),
    /// `add_ids` got an id never handed out by `level_id`.
    #[error("unknown level id {0}")]
    UnknownLevelId(u32),
    /// `merge` of statistics with different columns.
    #[error("cannot merge statistics with different columns")]
    ColumnsDiffer,
    /// No responses.
    #[error("no data")]
    NoData,
    /// Fewer responses than fixed effects.
    #[error("{n} responses are too few for {p} fixed effects")]
    TooFewObservations {
        /// Responses.
        n: usize,
        /// Fixed effects.
        p: usize,
    },
    /// The optimiser or a factorisation failed.
    #[error("optimisation failed: {0}")]
    Optimizer(String),
    /// An emmeans specification names something that is not a factor of the fixed effects.
    #[error("emmeans: {0}")]
    Emmeans(String),
}
