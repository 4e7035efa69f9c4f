//! Delivery guarantees end to end: both services on loopback over real gRPC
//! and real SQLite; every answer stored exactly once, across restarts.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use careers_collector::runner;
use careers_proto::v1::analyzer_service_client::AnalyzerServiceClient;
use careers_proto::v1::collector_service_client::CollectorServiceClient;
use careers_proto::v1::{
    CancelStudyRequest, CreateStudyRequest, ExportResponsesRequest, GetStudyRequest,
    GetSummaryRequest, ListStudiesRequest, Study, StudyState, Summary, WatchStudyRequest,
    WatchSummaryRequest,
};
use common::*;
use tokio_stream::StreamExt;

async fn summary(url: &str, study: &str) -> Summary {
    let mut client = AnalyzerServiceClient::connect(url.to_string())
        .await
        .expect("connect");
    client
        .get_summary(GetSummaryRequest {
            study_id: study.into(),
        })
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("summary present")
}

async fn exported_ids(url: &str, study: &str) -> Vec<String> {
    let mut client = AnalyzerServiceClient::connect(url.to_string())
        .await
        .expect("connect");
    let mut stream = client
        .export_responses(ExportResponsesRequest {
            study_id: study.into(),
            page_size: 777,
        })
        .await
        .expect("export")
        .into_inner();
    let mut ids = Vec::new();
    while let Some(page) = stream.next().await {
        ids.extend(
            page.expect("page")
                .responses
                .into_iter()
                .map(|r| r.response_id),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_through_the_collector_service_is_counted_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer = analyzer_at(loopback(), &dir.path().join("analyzer.sqlite")).await;
    let analyzer_url = url(analyzer.addr);
    let ctx = run_context(dir.path(), &analyzer_url).await;
    let collector = careers_collector::server::start(loopback(), ctx)
        .await
        .expect("collector starts");
    let mut client = CollectorServiceClient::connect(url(collector.addr))
        .await
        .expect("connect");

    // A watcher that sees the analyzer's summary grow live.
    let mut watch = AnalyzerServiceClient::connect(analyzer_url.clone())
        .await
        .expect("connect")
        .watch_summary(WatchSummaryRequest {
            study_id: "e2e".into(),
            min_interval_ms: 50,
        })
        .await
        .expect("watch")
        .into_inner();

    let spec = paper_spec("e2e", 3);
    let total = task_count(&spec);
    let request = CreateStudyRequest {
        request_id: "req-e2e".into(),
        spec: Some(spec.clone()),
    };
    let created = client
        .create_study(request.clone())
        .await
        .expect("create")
        .into_inner()
        .study
        .expect("study");
    assert_eq!(created.study_id, "e2e");
    assert_eq!(created.progress.as_ref().map(|p| p.total), Some(total));

    let last = watch_to_end(&mut client, "e2e").await;
    assert_eq!(last.state, StudyState::Completed as i32, "{last:?}");
    let p = last.progress.expect("progress");
    assert_eq!(
        (p.done, p.total, p.forwarded, p.errors),
        (total, total, total, 0)
    );
    assert_eq!(p.cells.len(), 4 * 2 * 2);
    assert!(
        p.cells
            .iter()
            .all(|c| c.done == c.total && c.total == 60 * 3)
    );

    let s = summary(&analyzer_url, "e2e").await;
    assert_eq!(s.responses, total);
    assert_eq!(s.valid + s.invalid, total);
    assert_eq!(s.invalid, p.invalid);
    assert_eq!(s.profiles.len(), 16);
    for profile in &s.profiles {
        assert_eq!(profile.n + profile.invalid, 60 * 3, "{profile:?}");
    }
    // Each simulated respondent's strongest interest comes out on top.
    let top = |name: &str| {
        s.profiles
            .iter()
            .filter(|p| p.respondent == name && p.instrument_id == "onet-ip-sf")
            .map(|p| p.holland_code.chars().next().expect("code"))
            .collect::<String>()
    };
    assert_eq!(top("simulated-social"), "SS");
    assert_eq!(top("simulated-artistic"), "AA");
    assert_eq!(top("simulated-enterprising"), "EE");
    assert_eq!(top("simulated-conventional"), "CC");

    // Usage per respondent: every response counted, simulated answers need one request each.
    assert_eq!(s.usage.len(), 4);
    for u in &s.usage {
        assert_eq!(
            (u.responses, u.requests, u.retries),
            (total / 4, total / 4, 0),
            "{u:?}"
        );
        assert!(u.input_tokens > 0 && u.output_tokens > 0);
        assert!(u.latency_p50_ms <= u.latency_p99_ms && u.latency_p99_ms <= u.latency_max_ms);
    }

    let ids = exported_ids(&analyzer_url, "e2e").await;
    assert_eq!(ids.len() as u64, total);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len() as u64, total);

    // The watcher saw the final revision.
    let mut seen = 0;
    while seen < s.revision {
        let msg = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch summary keeps coming")
            .expect("stream open")
            .expect("summary");
        seen = msg.summary.expect("summary").responses;
    }
    assert_eq!(seen, total);

    // CreateStudy is idempotent: the same request starts nothing new.
    let again = client
        .create_study(request)
        .await
        .expect("create again")
        .into_inner()
        .study
        .expect("study");
    assert_eq!(again.create_time, created.create_time);
    assert_eq!(again.state, StudyState::Completed as i32);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(summary(&analyzer_url, "e2e").await.revision, s.revision);

    let got = client
        .get_study(GetStudyRequest {
            study_id: "e2e".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        got.study.expect("study").progress.expect("progress").done,
        total
    );
    let listed = client
        .list_studies(ListStudiesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.studies.len(), 1);
    assert!(listed.next_page_token.is_empty());

    collector.shutdown().await.expect("collector stops");
    analyzer.shutdown().await.expect("analyzer stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyzer_restarted_mid_run_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("analyzer.sqlite");
    let analyzer = analyzer_at(loopback(), &db).await;
    let addr = analyzer.addr;
    let analyzer_url = url(addr);
    let ctx = run_context(dir.path(), &analyzer_url).await;
    let spec = paper_spec("restart", 10);
    let total = task_count(&spec);
    let progress = runner::prepare(&ctx, "", &spec).await.expect("prepare");
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let run = {
        let (ctx, spec, progress) = (ctx.clone(), spec.clone(), progress.clone());
        tokio::spawn(async move { runner::run(&ctx, &spec, progress, cancel_rx).await })
    };

    // Stop the analyzer once some answers are acknowledged, then bring it
    // back on the same port and database.
    let mut changes = progress.subscribe();
    while progress.snapshot().forwarded < 1000 {
        changes.changed().await.expect("progress updates");
    }
    analyzer.shutdown().await.expect("analyzer stops");
    let forwarded_at_stop = progress.snapshot().forwarded;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let analyzer = analyzer_at(addr, &db).await;

    let outcome = run.await.expect("join").expect("run");
    assert_eq!(outcome.state, StudyState::Completed);
    assert!(
        forwarded_at_stop < total,
        "the stop came before the end ({forwarded_at_stop} of {total})"
    );
    let s = summary(&analyzer_url, "restart").await;
    assert_eq!(s.responses, total, "exactly one row per task");
    let ids = exported_ids(&analyzer_url, "restart").await;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len() as u64, total);
    assert_eq!(ids.len() as u64, total);
    analyzer.shutdown().await.expect("analyzer stops");

    // After a second restart the statistics are rebuilt from the store.
    let analyzer = analyzer_at(loopback(), &db).await;
    let replayed = summary(&url(analyzer.addr), "restart").await;
    assert_eq!(replayed.responses, total);
    assert_eq!(replayed.profiles, s.profiles);
    analyzer.shutdown().await.expect("analyzer stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_study_resumes_without_asking_answered_tasks_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer = analyzer_at(loopback(), &dir.path().join("analyzer.sqlite")).await;
    let analyzer_url = url(analyzer.addr);
    let ctx = run_context(dir.path(), &analyzer_url).await;
    let mut spec = paper_spec("resume", 10);
    spec.concurrency = 4;
    let total = task_count(&spec);

    let progress = runner::prepare(&ctx, "", &spec).await.expect("prepare");
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let run = {
        let (ctx, spec, progress) = (ctx.clone(), spec.clone(), progress.clone());
        tokio::spawn(async move { runner::run(&ctx, &spec, progress, cancel_rx).await })
    };
    let mut changes = progress.subscribe();
    while progress.snapshot().done < 2000 {
        changes.changed().await.expect("progress updates");
    }
    cancel.send(true).expect("cancel");
    let first = run.await.expect("join").expect("run");
    assert_eq!(first.state, StudyState::Cancelled);
    assert!(
        first.answered_now >= 2000 && first.answered_now < total,
        "{first:?}"
    );
    assert_eq!(
        summary(&analyzer_url, "resume").await.responses,
        first.answered_now
    );

    // A fresh process would do exactly this: prepare from the journal and run.
    let ctx = run_context(dir.path(), &analyzer_url).await;
    let progress = runner::prepare(&ctx, "", &spec)
        .await
        .expect("prepare again");
    assert_eq!(progress.snapshot().done, first.answered_now);
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let second = runner::run(&ctx, &spec, progress, cancel_rx)
        .await
        .expect("resume");
    assert_eq!(second.state, StudyState::Completed);
    assert_eq!(
        first.answered_now + second.answered_now,
        total,
        "no task asked twice"
    );
    assert_eq!(summary(&analyzer_url, "resume").await.responses, total);
    analyzer.shutdown().await.expect("analyzer stops");
}

async fn watch_to_end(
    client: &mut CollectorServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Study {
    let mut stream = client
        .watch_study(WatchStudyRequest {
            study_id: id.into(),
            min_interval_ms: 50,
        })
        .await
        .expect("watch study")
        .into_inner();
    let mut last = None;
    while let Some(msg) = stream.next().await {
        last = msg.expect("progress").study;
    }
    last.expect("at least one progress message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_service_resumes_cancels_and_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer = analyzer_at(loopback(), &dir.path().join("analyzer.sqlite")).await;
    let analyzer_url = url(analyzer.addr);

    // A study an earlier server left running (killed before it asked
    // anything): its rows are in the journal, its state is RUNNING.
    let left = paper_spec("left-running", 1);
    let left_total = task_count(&left);
    {
        let ctx = run_context(dir.path(), &analyzer_url).await;
        runner::prepare(&ctx, "req-left", &left)
            .await
            .expect("prepare");
    }
    let ctx = run_context(dir.path(), &analyzer_url).await;
    let collector = careers_collector::server::start(loopback(), ctx)
        .await
        .expect("collector starts");
    let mut client = CollectorServiceClient::connect(url(collector.addr))
        .await
        .expect("connect");
    // The new server carries on with it by itself.
    let resumed = watch_to_end(&mut client, "left-running").await;
    assert_eq!(resumed.state, StudyState::Completed as i32, "{resumed:?}");
    assert_eq!(
        summary(&analyzer_url, "left-running").await.responses,
        left_total
    );

    // CancelStudy stops a running study and it stays cancelled.
    let big = paper_spec("to-cancel", 20);
    let big_total = task_count(&big);
    let request = CreateStudyRequest {
        request_id: "req-cancel".into(),
        spec: Some(big.clone()),
    };
    client.create_study(request.clone()).await.expect("create");
    let cancelled = client
        .cancel_study(CancelStudyRequest {
            study_id: "to-cancel".into(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .study
        .expect("study");
    assert_eq!(cancelled.state, StudyState::Cancelled as i32);
    let ended = watch_to_end(&mut client, "to-cancel").await;
    assert_eq!(ended.state, StudyState::Cancelled as i32, "{ended:?}");
    let done = ended.progress.expect("progress").done;
    assert!(
        done < big_total,
        "{done} of {big_total}: cancelled mid-study"
    );

    // A request id names one request: another design under it is refused and
    // changes nothing; the identical request gets the study as it is.
    let mut other = big.clone();
    other.replications = 2;
    let status = client
        .create_study(CreateStudyRequest {
            request_id: "req-cancel".into(),
            spec: Some(other),
        })
        .await
        .expect_err("a reused request id");
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert!(status.message().starts_with("request_id:"), "{status:?}");
    let again = client
        .create_study(request)
        .await
        .expect("a retried request")
        .into_inner()
        .study
        .expect("study");
    assert_eq!(again.state, StudyState::Cancelled as i32);
    assert_eq!(again.progress.map(|p| p.total), Some(big_total));

    // ListStudies walks every study once, page by page, even when a study
    // is created in the middle of the walk.
    for i in 0..3 {
        client
            .create_study(CreateStudyRequest {
                request_id: format!("req-page-{i}"),
                spec: Some(paper_spec(&format!("page-{i}"), 1)),
            })
            .await
            .expect("create");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_studies(ListStudiesRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.studies.len() <= 2);
        seen.extend(page.studies.into_iter().map(|s| s.study_id));
        if token.is_empty() {
            client
                .create_study(CreateStudyRequest {
                    request_id: "req-late".into(),
                    spec: Some(paper_spec("page-late", 1)),
                })
                .await
                .expect("create");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["left-running", "page-0", "page-1", "page-2", "to-cancel"],
        "walked in order {seen:?}"
    );
    collector.shutdown().await.expect("collector stops");
    analyzer.shutdown().await.expect("analyzer stops");
}
