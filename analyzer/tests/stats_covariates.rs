//! Continuous covariates kept as per-cell moments (no cell per value) give the same fit as
//! lme4: sleepstudy with `Days` declared as a covariate, cells are the 18 subjects only. The same
//! data with `Days` as a text column whose values parse as numbers (one cell per subject and
//! day) gives the same fit too.

use std::path::PathBuf;

use careers_analyzer::stats::{
    Design, FitOptions, Formula, Satterthwaite, StatsError, SufficientStats, anova_type3, fit,
    fixed_effects,
};
use serde_json::Value;

fn reference() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sleepstudy.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("json")).expect("valid")
}

fn stats_with(days_as_moments: bool) -> SufficientStats {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sleepstudy.csv");
    let mut reader = csv::Reader::from_path(p).expect("csv");
    let mut s = if days_as_moments {
        SufficientStats::with_covariates("Reaction", &["Subject"], &["Days"])
    } else {
        SufficientStats::new("Reaction", &["Subject", "Days"])
    };
    for rec in reader.records() {
        let rec = rec.expect("record");
        let y: f64 = rec[0].parse().expect("Reaction");
        if days_as_moments {
            let days: f64 = rec[1].parse().expect("Days");
            s.add_with_covariates(&[&rec[2]], &[days], y).expect("add");
        } else {
            s.add(&[&rec[2], &rec[1]], y).expect("add");
        }
    }
    s
}

fn stats() -> SufficientStats {
    stats_with(true)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn sleepstudy_with_days_as_moments_matches_lme4() {
    let s = stats();
    assert_eq!(
        s.n_cells(),
        18,
        "one cell per subject, not per (subject, day)"
    );
    check_against_lme4(&s);
}

#[test]
fn sleepstudy_with_days_as_numeric_levels_matches_lme4() {
    let s = stats_with(false);
    assert_eq!(s.n_cells(), 180);
    check_against_lme4(&s);
}

fn check_against_lme4(s: &SufficientStats) {
    let reference = reference();
    for want in reference["fits"].as_array().expect("fits") {
        let reml = want["reml"].as_bool().unwrap_or(true);
        let formula = Formula::parse(want["formula"].as_str().expect("formula")).expect("parse");
        let design = Design::build(s, &formula).expect("design");
        let fit = fit(
            &design,
            &FitOptions {
                reml,
                ..FitOptions::default()
            },
        )
        .expect("fit");
        let label = formula.text.clone();
        assert!(
            rel(fit.criterion, want["criterion"].as_f64().expect("crit")) < 1e-6,
            "{label}"
        );
        assert!(
            rel(fit.sigma, want["sigma"].as_f64().expect("sigma")) < 1e-6,
            "{label}"
        );
        let satt = Satterthwaite::new(&design, &fit).expect("satterthwaite");
        let fixed = fixed_effects(&fit, &satt);
        let want_fixed = want["fixed"].as_array().expect("fixed");
        assert_eq!(fixed.len(), want_fixed.len(), "{label}: fixed effects");
        for (g, w) in fixed.iter().zip(want_fixed) {
            assert_eq!(g.name, w["term"].as_str().expect("term"));
            assert!(
                rel(g.estimate, w["estimate"].as_f64().expect("e")) < 1e-6,
                "{label}"
            );
            assert!(rel(g.se, w["se"].as_f64().expect("se")) < 1e-6, "{label}");
            assert!(rel(g.df, w["df"].as_f64().expect("df")) < 1e-3, "{label}");
        }
        let sds: Vec<f64> = fit.components.iter().flat_map(|c| c.sd.clone()).collect();
        let want_sds: Vec<f64> = want["random"]
            .as_array()
            .expect("random")
            .iter()
            .filter(|r| r["group"] != "Residual")
            .filter_map(|r| r["sd"].as_f64())
            .collect();
        assert_eq!(sds.len(), want_sds.len(), "{label}: random SDs");
        for (g, w) in sds.iter().zip(&want_sds) {
            assert!(rel(*g, *w) < 1e-6, "{label}: sd {g} vs {w}");
        }
        let anova = anova_type3(&design, &fit, &satt).expect("anova");
        let want_anova = want["anova"].as_array().expect("anova");
        assert_eq!(anova.len(), want_anova.len(), "{label}: anova rows");
        for (g, w) in anova.iter().zip(want_anova) {
            assert!(rel(g.f, w["f"].as_f64().expect("f")) < 1e-3, "{label}");
            assert!(
                rel(g.den_df, w["den_df"].as_f64().expect("ddf")) < 1e-3,
                "{label}"
            );
        }
    }
}

#[test]
fn covariate_errors_are_named() {
    let s = stats();
    let grouping = Formula::parse("Reaction ~ 1 + (1 | Days)").expect("parse");
    assert!(matches!(
        Design::build(&s, &grouping),
        Err(StatsError::Formula(m)) if m.contains("Days")
    ));
    let mut two = SufficientStats::with_covariates("y", &["g"], &["a", "b"]);
    assert!(matches!(
        two.add_with_covariates(&["x"], &[1.0], 2.0),
        Err(StatsError::Arity { .. })
    ));
    two.add_with_covariates(&["x"], &[1.0, 2.0], 3.0)
        .expect("add");
    let product = Formula::parse("y ~ a:b + (1 | g)").expect("parse");
    assert!(matches!(
        Design::build(&two, &product),
        Err(StatsError::Formula(m)) if m.contains("a:b")
    ));
}

/// Covariate moments merge exactly: the rows split in two, in any order, fed to two
/// statistics and merged (with the subjects' levels numbered differently in each part) give
/// lme4's fit again.
#[test]
fn covariate_moments_merge_to_the_same_fit() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sleepstudy.csv");
    let mut reader = csv::Reader::from_path(p).expect("csv");
    let mut rows: Vec<(String, f64, f64)> = reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            (
                r[2].to_string(),
                r[1].parse().expect("Days"),
                r[0].parse().expect("Reaction"),
            )
        })
        .collect();
    // A fixed shuffle: every 7th row first, the rest reversed.
    let (first, rest): (Vec<_>, Vec<_>) = rows.drain(..).enumerate().partition(|(i, _)| i % 7 == 0);
    let mut a = SufficientStats::with_covariates("Reaction", &["Subject"], &["Days"]);
    let mut b = SufficientStats::with_covariates("Reaction", &["Subject"], &["Days"]);
    for (_, (subject, days, y)) in first {
        a.add_with_covariates(&[&subject], &[days], y).expect("add");
    }
    for (_, (subject, days, y)) in rest.into_iter().rev() {
        b.add_with_covariates(&[&subject], &[days], y).expect("add");
    }
    b.merge(&a).expect("merge");
    assert_eq!((b.n(), b.n_cells()), (180, 18));
    check_against_lme4(&b);
}
