//! Sufficient statistics are order- and batch-independent: feeding the reference Likert data in
//! any order and in any batch sizes (merged) gives the same fit as feeding it at once; warm
//! starts converge to the same optimum; bad input is an error, not a panic.

use std::path::PathBuf;

use careers_analyzer::fit::{FitArgs, FitCommandError, run_fit};
use careers_analyzer::stats::{Design, FitOptions, Formula, StatsError, SufficientStats, fit};

const PAPER: &str = "rating ~ scale * respondent * language + (1 | item) + (1 | item:respondent)";
const COLUMNS: [&str; 5] = ["respondent", "language", "scale", "item", "instrument"];

fn rows() -> Vec<(Vec<String>, f64)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/likert_empty.csv");
    let mut reader = csv::Reader::from_path(path).expect("csv");
    let header = reader.headers().expect("header").clone();
    let idx: Vec<usize> = COLUMNS
        .iter()
        .map(|c| header.iter().position(|h| h == *c).expect("column"))
        .collect();
    let y = header.iter().position(|h| h == "rating").expect("rating");
    reader
        .records()
        .map(|r| {
            let r = r.expect("record");
            let levels = idx.iter().map(|&i| r[i].to_string()).collect();
            (levels, r[y].parse().expect("number"))
        })
        .collect()
}

fn add_all(stats: &mut SufficientStats, rows: &[(Vec<String>, f64)]) {
    for (levels, y) in rows {
        let l: Vec<&str> = levels.iter().map(String::as_str).collect();
        stats.add(&l, *y).expect("add");
    }
}

/// A deterministic permutation (LCG-driven Fisher-Yates), no RNG crate needed.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
}

fn fit_stats(stats: &SufficientStats) -> careers_analyzer::stats::LmmFit {
    let formula = Formula::parse(PAPER).expect("formula");
    let design = Design::build(stats, &formula).expect("design");
    fit(&design, &FitOptions::default()).expect("fit")
}

fn assert_same(a: &careers_analyzer::stats::LmmFit, b: &careers_analyzer::stats::LmmFit) {
    let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-8);
    assert!(rel(a.criterion, b.criterion) < 1e-10, "criterion");
    assert_eq!(a.fixed_names, b.fixed_names);
    assert_eq!(a.dropped_columns, b.dropped_columns);
    assert_eq!(a.beta.len(), b.beta.len());
    assert_eq!(a.theta.len(), b.theta.len());
    for (x, y) in a.beta.iter().zip(&b.beta) {
        assert!((x - y).abs() < 1e-6, "beta {x} vs {y}");
    }
    for (x, y) in a.theta.iter().zip(&b.theta) {
        assert!((x - y).abs() < 1e-5, "theta {x} vs {y}");
    }
    assert!(rel(a.sigma, b.sigma) < 1e-6);
}

#[test]
fn order_and_batches_do_not_matter() {
    let data = rows();
    let mut all = SufficientStats::new("rating", &COLUMNS);
    add_all(&mut all, &data);
    let reference = fit_stats(&all);

    for (seed, batch) in [(1u64, 1usize), (7, 13), (42, 250), (99, 997)] {
        let mut shuffled = data.clone();
        shuffle(&mut shuffled, seed);
        let mut merged = SufficientStats::new("rating", &COLUMNS);
        for chunk in shuffled.chunks(batch) {
            let mut part = SufficientStats::new("rating", &COLUMNS);
            add_all(&mut part, chunk);
            merged.merge(&part).expect("merge");
        }
        assert_eq!(merged.n(), all.n());
        assert_eq!(merged.n_cells(), all.n_cells());
        assert_same(&fit_stats(&merged), &reference);
    }
}

#[test]
fn new_levels_arrive_late_and_warm_start_agrees() {
    let data = rows();
    let (first, rest): (Vec<_>, Vec<_>) = data.iter().cloned().partition(|(l, _)| l[0] != "spark");
    let mut stats = SufficientStats::new("rating", &COLUMNS);
    add_all(&mut stats, &first);
    let early = fit_stats(&stats);
    add_all(&mut stats, &rest); // a whole respondent appears only now
    let formula = Formula::parse(PAPER).expect("formula");
    let design = Design::build(&stats, &formula).expect("design");
    let cold = fit(&design, &FitOptions::default()).expect("cold");
    let warm = fit(
        &design,
        &FitOptions {
            start_theta: Some(early.theta.clone()),
            ..FitOptions::default()
        },
    )
    .expect("warm");
    assert_same(&warm, &cold);
    assert!(warm.converged && cold.converged);
}

#[test]
fn ids_and_strings_are_interchangeable() {
    let data = rows();
    let mut by_str = SufficientStats::new("rating", &COLUMNS);
    add_all(&mut by_str, &data);
    let mut by_id = SufficientStats::new("rating", &COLUMNS);
    for (levels, y) in &data {
        let ids: Vec<u32> = levels
            .iter()
            .enumerate()
            .map(|(c, l)| by_id.level_id(c, l).expect("id"))
            .collect();
        by_id.add_ids(&ids, &[], *y).expect("add ids");
    }
    assert_same(&fit_stats(&by_id), &fit_stats(&by_str));
}

#[test]
fn bad_input_is_an_error() {
    let mut stats = SufficientStats::new("rating", &COLUMNS);
    assert!(matches!(
        stats.add(&["a", "b"], 1.0),
        Err(StatsError::Arity { .. })
    ));
    assert!(matches!(
        stats.add(&["a", "b", "c", "d", "e"], f64::NAN),
        Err(StatsError::NonFinite(_))
    ));
    assert!(stats.add_ids(&[9, 9, 9, 9, 9], &[], 1.0).is_err());
    let formula = Formula::parse(PAPER).expect("formula");
    assert!(matches!(
        Design::build(&stats, &formula),
        Err(StatsError::NoData)
    ));
    let missing = Formula::parse("rating ~ mood + (1 | item)").expect("formula");
    stats.add(&["a", "b", "c", "d", "e"], 1.0).expect("add");
    assert_eq!(
        Design::build(&stats, &missing).map(|_| ()),
        Err(StatsError::MissingColumn("mood".into()))
    );
}

#[test]
fn fit_command_errors_are_one_line() {
    let dir = std::env::temp_dir().join(format!("careers-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let run = |data: PathBuf, formula: &str| {
        run_fit(&FitArgs {
            data,
            formula: formula.to_string(),
            ml: false,
            emmeans: None,
            json: true,
        })
    };
    let empty = write("empty.csv", "y,g\n");
    let bad_y = write("bad.csv", "y,g\n1,a\nfive,b\n");
    let ok = write("ok.csv", "y,g\n1,a\n2,a\n3,b\n5,b\n4,c\n6,c\n");
    let cases: Vec<(Result<String, FitCommandError>, &str)> = vec![
        (run(empty, "y ~ 1 + (1 | g)"), "no data rows"),
        (run(bad_y, "y ~ 1 + (1 | g)"), "not numeric on line 3"),
        (run(ok.clone(), "y ~ 1 + (1 | h)"), "no column named \"h\""),
        (run(ok.clone(), "y ~ 1 + (1 || g)"), "||"),
        (
            run(dir.join("absent.csv"), "y ~ 1 + (1 | g)"),
            "cannot read",
        ),
    ];
    for (res, needle) in cases {
        let e = res.expect_err(needle).to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        assert!(!e.contains('\n'), "{e:?} is one line");
    }
    let text = run(ok.clone(), "y ~ 1 + (1 | g)").expect("fits");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for key in [
        "formula",
        "reml",
        "n",
        "converged",
        "criterion",
        "loglik",
        "aic",
        "bic",
        "sigma",
        "fixed",
        "random",
        "anova",
        "emmeans",
        "dropped_columns",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert!(v["emmeans"].is_null(), "no --emmeans: null");

    // The nested shapes, on a fit with a correlation and marginal means.
    let likert = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/likert.csv");
    let text = run_fit(&FitArgs {
        data: likert,
        formula: "rating ~ scale * language + (1 + language | item)".into(),
        ml: false,
        emmeans: Some("scale:language".into()),
        json: true,
    })
    .expect("fits");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let has = |row: &serde_json::Value, keys: &[&str]| keys.iter().all(|k| row.get(*k).is_some());
    let fixed = v["fixed"].as_array().expect("fixed");
    assert_eq!(fixed.len(), 12);
    assert!(
        fixed
            .iter()
            .all(|r| has(r, &["term", "estimate", "se", "df", "t", "p"]))
    );
    let random = v["random"].as_array().expect("random");
    let sds = random
        .iter()
        .filter(|r| has(r, &["group", "term", "sd", "variance"]));
    assert_eq!(sds.count(), 3, "item intercept, item slope, residual");
    let corrs: Vec<_> = random
        .iter()
        .filter(|r| has(r, &["group", "term", "term2", "corr"]))
        .collect();
    assert_eq!(corrs.len(), 1, "{random:?}");
    assert!(corrs[0]["corr"].is_number(), "{:?}", corrs[0]);
    let anova = v["anova"].as_array().expect("anova");
    assert_eq!(anova.len(), 3);
    assert!(
        anova
            .iter()
            .all(|r| has(r, &["term", "num_df", "den_df", "f", "p"]))
    );
    assert_eq!(v["emmeans"]["spec"], "scale:language");
    let rows = v["emmeans"]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(
        |r| has(r, &["levels", "emmean", "se", "df", "lower", "upper"])
            && r["levels"].get("scale").is_some()
            && r["levels"].get("language").is_some()
    ));
    let summary = run_fit(&FitArgs {
        data: ok,
        formula: "y ~ 1 + (1 | g)".into(),
        ml: true,
        emmeans: None,
        json: false,
    })
    .expect("summary");
    assert!(summary.contains("maximum likelihood") && summary.contains("Random effects"));
    let _ = std::fs::remove_dir_all(&dir);
}
