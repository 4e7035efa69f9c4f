//! The studentized range distribution against R's `ptukey` / `qtukey` (values in
//! `tests/reference/tukey.json`, written by `generate.R`).

use std::path::PathBuf;

use careers_analyzer::stats::tukey::{ptukey, qtukey};
use serde_json::Value;

fn reference() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/tukey.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("tukey.json")).expect("json")
}

fn df_of(row: &Value) -> f64 {
    row.get("df")
        .and_then(Value::as_f64)
        .unwrap_or(f64::INFINITY)
}

#[test]
fn ptukey_matches_r() {
    let mut worst: f64 = 0.0;
    for row in reference()["ptukey"].as_array().expect("rows") {
        let (q, k, df) = (
            row["q"].as_f64().expect("q"),
            row["nmeans"].as_f64().expect("k"),
            df_of(row),
        );
        let want = row["p"].as_f64().expect("p");
        let got = ptukey(q, k, df);
        // Relative on both tails: the upper tail is what p values use.
        let err = ((got - want).abs() / want.max(1e-12))
            .max((got - want).abs() / (1.0 - want).max(1e-12));
        worst = worst.max(err);
        assert!(err < 1e-6, "ptukey({q}, {k}, {df}) = {got}, R says {want}");
    }
    println!("ptukey worst relative error (both tails): {worst:.2e}");
}

#[test]
fn qtukey_matches_r() {
    let mut worst: f64 = 0.0;
    for row in reference()["qtukey"].as_array().expect("rows") {
        let (p, k, df) = (
            row["p"].as_f64().expect("p"),
            row["nmeans"].as_f64().expect("k"),
            df_of(row),
        );
        let want = row["q"].as_f64().expect("q");
        let got = qtukey(p, k, df);
        let err = (got - want).abs() / want;
        worst = worst.max(err);
        assert!(err < 1e-4, "qtukey({p}, {k}, {df}) = {got}, R says {want}");
    }
    println!("qtukey worst relative error: {worst:.2e}");
}

#[test]
fn invalid_arguments_give_nan() {
    assert!(ptukey(1.0, 1.0, 10.0).is_nan());
    assert!(ptukey(1.0, 3.0, 1.0).is_nan());
    assert_eq!(ptukey(-1.0, 3.0, 10.0), 0.0);
    assert!(qtukey(1.5, 3.0, 10.0).is_nan());
}
