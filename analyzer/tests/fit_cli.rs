//! The `careers-analyzer fit` binary as users run it: exit code 2 with one line for bad
//! input, R's treatment of missing values, and the conditional modes in its JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

fn analyzer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_careers-analyzer"))
}

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(name)
}

fn fit_json(data: &Path, formula: &str) -> serde_json::Value {
    let out = analyzer()
        .args(["fit", "--json", "--formula", formula, "--data"])
        .arg(data)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn bad_input_exits_2_with_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let ok = write(
        "ok.csv",
        "y,g,x\n1,a,1\n2,a,2\n3,b,1\n5,b,2\n4,c,1\n6,c,2\n",
    );
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (write("empty.csv", ""), "y ~ 1 + (1 | g)", "no data rows"),
        (
            write("header.csv", "y,g\n"),
            "y ~ 1 + (1 | g)",
            "no data rows",
        ),
        (
            write("bad.csv", "y,g\n1,a\nfive,b\n"),
            "y ~ 1 + (1 | g)",
            "\"five\"",
        ),
        (
            write("na.csv", "y,g\nNA,a\n,b\n"),
            "y ~ 1 + (1 | g)",
            "every row's y is missing",
        ),
        (ok.clone(), "y ~ x + (1 | h)", "no column named \"h\""),
        (ok.clone(), "y ~ poly(x, 2) + (1 | g)", "poly(...)"),
        (ok.clone(), "y ~ x^2 + (1 | g)", "powers"),
        (ok.clone(), "y ~ x", "random"),
        (
            dir.path().join("absent.csv"),
            "y ~ 1 + (1 | g)",
            "cannot read",
        ),
    ];
    for (data, formula, needle) in cases {
        let out = analyzer()
            .args(["fit", "--json", "--formula", formula, "--data"])
            .arg(&data)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{formula} on {data:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{formula}: nothing on stdout");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(
            stderr.contains(needle),
            "{stderr:?} should mention {needle:?}"
        );
    }
}

/// Rows with a missing response or predictor are dropped as `lmer`'s `na.omit` drops them:
/// the fit equals the fit of the file without those rows.
#[test]
fn missing_values_are_dropped_as_lmer_drops_them() {
    let text = std::fs::read_to_string(reference("sleepstudy.csv")).expect("sleepstudy");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header = lines.remove(0);
    let mut with_na = vec![header.clone()];
    let mut without = vec![header];
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        match i % 37 {
            // Reaction missing, Days missing (empty), Days NA, Subject NA.
            3 => with_na.push(format!("NA,{},{}", fields[1], fields[2])),
            11 => with_na.push(format!("{},,{}", fields[0], fields[2])),
            19 => with_na.push(format!("{},NA,{}", fields[0], fields[2])),
            27 => with_na.push(format!("{},{},NA", fields[0], fields[1])),
            _ => {
                with_na.push(line.clone());
                without.push(line.clone());
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("with_na.csv");
    let b = dir.path().join("without.csv");
    std::fs::write(&a, with_na.join("\n")).expect("write");
    std::fs::write(&b, without.join("\n")).expect("write");
    let formula = "Reaction ~ Days + (Days | Subject)";
    let (fa, fb) = (fit_json(&a, formula), fit_json(&b, formula));
    assert_eq!(fa["n"], fb["n"]);
    assert_eq!(fa["n"].as_u64(), Some(without.len() as u64 - 1));
    assert!(fa["n"].as_u64() < Some(180), "rows were dropped");
    // Days stays a numeric covariate despite its missing values.
    let terms: Vec<&str> = fa["fixed"]
        .as_array()
        .expect("fixed")
        .iter()
        .filter_map(|f| f["term"].as_str())
        .collect();
    assert_eq!(terms, vec!["(Intercept)", "Days"]);
    let (ca, cb) = (
        fa["criterion"].as_f64().expect("criterion"),
        fb["criterion"].as_f64().expect("criterion"),
    );
    assert!((ca - cb).abs() <= 1e-9 * cb.abs(), "{ca} vs {cb}");
}

/// The JSON's `ranef` holds lme4's conditional modes (checked against `ranef()` in R).
#[test]
fn conditional_modes_are_in_the_json() {
    let got = fit_json(
        &reference("sleepstudy.csv"),
        "Reaction ~ Days + (Days | Subject)",
    );
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference("sleepstudy.json")).expect("ref"))
            .expect("json");
    let want = want["fits"]
        .as_array()
        .expect("fits")
        .iter()
        .find(|f| f["formula"] == "Reaction ~ Days + (Days | Subject)" && f["reml"] == true)
        .expect("reference fit")["ranef"][0]
        .clone();
    let got = &got["ranef"][0];
    assert_eq!(got["group"], "Subject");
    let levels = want["levels"].as_array().expect("levels");
    let terms = want["terms"].as_array().expect("terms");
    assert_eq!(
        got["levels"].as_object().map(|m| m.len()),
        Some(levels.len())
    );
    for (t, term) in terms.iter().enumerate() {
        let term = term.as_str().expect("term");
        for (l, level) in levels.iter().enumerate() {
            let level = level.as_str().expect("level");
            let r = want["values"][t][l].as_f64().expect("R value");
            let ours = got["levels"][level][term].as_f64().expect("our value");
            assert!(
                (ours - r).abs() <= 1e-5 * r.abs().max(1.0),
                "{level} {term}: {ours} vs {r}"
            );
        }
    }
    assert!(got["levels"]["308"]["Days"].is_number());
}
