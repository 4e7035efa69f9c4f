//! The `careers-collector` binary as a user runs it.

use std::process::Command;

const PAPER: &str = include_str!("../studies/paper-simulated.toml");

fn collector() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_careers-collector"));
    cmd.env_remove("CAREERS_ANALYZER_URL")
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "error");
    cmd
}

#[test]
fn run_prints_the_riasec_table_and_writes_canonical_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let study = dir.path().join("small.toml");
    std::fs::write(
        &study,
        PAPER
            .replace("replications = 20", "replications = 2")
            .replace("\"paper-simulated\"", "\"small\""),
    )
    .expect("write study");
    let json = dir.path().join("summary.json");
    let out = collector()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("run")
        .arg(&study)
        .arg("--summary-json")
        .arg(&json)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("onet-ip-sf: mean rating"), "{stdout}");
    assert!(
        stdout.contains("onet-ip-sf-competence: mean rating"),
        "{stdout}"
    );
    assert!(stdout.contains("1920 responses"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("simulated-social") && l.contains(" en "))
        .expect("a social row");
    assert!(
        row.split_whitespace()
            .any(|w| w.starts_with('S') && w.len() == 3),
        "{row}"
    );

    let text = std::fs::read_to_string(&json).expect("json written");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(summary["studyId"], "small");
    assert_eq!(summary["responses"], "1920");
    assert_eq!(summary["profiles"].as_array().map(Vec::len), Some(16));

    // Running it again resumes: nothing left to ask, same answers.
    let again = collector()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("run")
        .arg(&study)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(stdout.contains("(0 in this run)"), "{stdout}");
    assert!(stdout.contains("1920 responses"), "{stdout}");
}

fn bad_input(study_text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let study = dir.path().join("bad.toml");
    std::fs::write(&study, study_text).expect("write");
    let out = collector()
        .arg("--data-dir")
        .arg(dir.path())
        .arg("run")
        .arg(&study)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn bad_study_files_exit_2_with_one_line_naming_the_problem() {
    let e = bad_input(&PAPER.replace("\"onet-ip-sf-competence\"]", "\"nope\"]"));
    assert!(
        e.contains("instruments[1]: unknown instrument \"nope\""),
        "{e}"
    );
    let e = bad_input(&PAPER.replace("replications = 20", "replications = \"many\""));
    assert!(e.contains("line 11"), "{e}");
    let e = bad_input(&PAPER.replacen("noise_sd = 0.6", "noise_sd = -1", 1));
    assert!(e.contains("respondents[0].simulated.noise_sd"), "{e}");
    let e = bad_input(include_str!("../studies/paper-live.toml"));
    assert!(
        e.contains("respondents[0].api_key_env: environment variable OPENAI_API_KEY is not set"),
        "{e}"
    );
    let missing = collector()
        .arg("run")
        .arg("/nonexistent/study.toml")
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(2));
}
