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

/// Runs `study` with its journal in `data`, writing the summary JSON to
/// `json`; asserts success and returns standard output.
fn run_study(data: &std::path::Path, study: &std::path::Path, json: &std::path::Path) -> String {
    let out = collector()
        .arg("--data-dir")
        .arg(data)
        .arg("run")
        .arg(study)
        .arg("--summary-json")
        .arg(json)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
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
    let stdout = run_study(&dir.path().join("data"), &study, &json);
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

/// A persona factor crossed with the paper's design, every form asked in one
/// request: each answer carries its condition, the table shows it, and the
/// analyzer's export has a `persona` column that `fit` can use.
#[test]
fn factors_and_all_items_reach_the_analyzer_as_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let study = dir.path().join("factors.toml");
    let mut text = PAPER
        .replace("replications = 20", "replications = 3")
        .replace("\"paper-simulated\"", "\"factors\"")
        .replace(
            "concurrency = ",
            "administration = \"all_items\"\nreask_invalid = 2\nconcurrency = ",
        );
    // Tables after every top-level key.
    text.push_str(
        r#"
[[factors]]
name = "persona"
[[factors.levels]]
name = "none"
[[factors.levels]]
name = "teacher"
system_prompt = { en = "You are a high-school teacher.", zh = "你是一名高中教师。" }
preamble = { en = "Answer as yourself." }
"#,
    );
    assert!(text.contains("[[factors]]"), "the study file changed shape");
    std::fs::write(&study, text).expect("write study");
    let data = dir.path().join("data");
    let json = dir.path().join("summary.json");
    let stdout = run_study(&data, &study, &json);
    // 4 respondents x 2 personas x 2 languages x 2 instruments x 60 items x 3.
    assert!(stdout.contains("5760 responses"), "{stdout}");
    assert!(stdout.contains("persona=teacher"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("JSON");
    let profiles = summary["profiles"].as_array().expect("profiles");
    assert_eq!(profiles.len(), 32);
    assert_eq!(
        profiles
            .iter()
            .filter(|p| p["conditions"]["persona"] == "teacher")
            .count(),
        16
    );
    // One request per form (plus re-asks): far fewer requests than answers.
    let usage = summary["usage"].as_array().expect("usage");
    assert_eq!(usage.len(), 4);
    let requests: u64 = usage
        .iter()
        .map(|u| {
            u["requests"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| u["requests"].as_u64())
                .expect("requests")
        })
        .sum();
    // 96 forms, each one request, re-asks only for unreadable lines.
    assert!((96..=96 * 3).contains(&requests), "{requests} requests");

    // The analyzer's export (as `careers-analyzer export` writes it) and fit.
    let csv_path = dir.path().join("responses.csv");
    let file = std::fs::File::create(&csv_path).expect("create csv");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let exported = runtime
        .block_on(careers_analyzer::export::export_database(
            &data.join("analyzer.sqlite"),
            "factors",
            std::io::BufWriter::new(file),
        ))
        .expect("export");
    assert_eq!(exported, 5760);
    let text = std::fs::read_to_string(&csv_path).expect("csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5760);
    assert!(
        rows.iter().all(|r| r.len() == header.len()),
        "no quoted commas expected"
    );
    let teacher = rows
        .iter()
        .filter(|r| r[col("persona")] == "teacher")
        .count();
    assert_eq!(teacher, 2880);
    assert!(rows.iter().all(|r| r[col("administration")] == "all_items"));
    let valid = rows.iter().filter(|r| r[col("rating")] != "NA").count();
    assert!(valid > 5000, "{valid} valid answers");

    let report = careers_analyzer::fit::fit_report(&careers_analyzer::fit::FitArgs {
        data: csv_path,
        formula: "rating ~ scale * persona + (1 | item) + (1 | respondent)".into(),
        ml: false,
        emmeans: Some("persona".into()),
        json: true,
    })
    .expect("fit");
    let report = serde_json::to_value(&report).expect("JSON");
    let terms: Vec<&str> = report["fixed"]
        .as_array()
        .expect("fixed")
        .iter()
        .filter_map(|f| f["term"].as_str())
        .collect();
    assert!(terms.contains(&"personateacher"), "{terms:?}");
    assert_eq!(report["n"], valid as u64);
    assert_eq!(report["emmeans"]["rows"].as_array().map(Vec::len), Some(2));
}
