//! The gRPC contract seen from outside: INVALID_ARGUMENT with the field named,
//! duplicates acknowledged and ignored, health and reflection on both servers.

mod common;

use careers_proto::v1::analyzer_service_client::AnalyzerServiceClient;
use careers_proto::v1::collector_service_client::CollectorServiceClient;
use careers_proto::v1::item_response::Answer;
use careers_proto::v1::{
    CreateStudyRequest, GetStudyRequest, GetSummaryRequest, IngestRequest, IngestResponse,
    ItemResponse, ListInstrumentsRequest, ListStudiesRequest, Respondent, Scale,
};
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

fn response(id: &str, rating: u32) -> ItemResponse {
    ItemResponse {
        response_id: id.into(),
        study_id: "contract".into(),
        instrument_id: "onet-ip-sf".into(),
        item_id: "S01".into(),
        scale: Scale::Social as i32,
        respondent: Some(Respondent {
            name: "client".into(),
            ..Default::default()
        }),
        language: "en".into(),
        replication: 1,
        answer: Some(Answer::Rating(rating)),
        raw_text: rating.to_string(),
        ..Default::default()
    }
}

async fn ingest_once(
    client: &mut AnalyzerServiceClient<tonic::transport::Channel>,
    batch: IngestRequest,
) -> Result<IngestResponse, tonic::Status> {
    let mut acks = client
        .ingest(tokio_stream::iter(vec![batch]))
        .await?
        .into_inner();
    acks.next()
        .await
        .unwrap_or_else(|| Err(tonic::Status::unknown("no ack")))
}

#[tokio::test]
async fn the_analyzer_names_bad_fields_and_ignores_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer = analyzer_at(loopback(), &dir.path().join("a.sqlite")).await;
    let mut client = AnalyzerServiceClient::connect(url(analyzer.addr))
        .await
        .expect("connect");

    let mut bad_scale = response("r2", 3);
    bad_scale.scale = 42;
    let mut bad_rating = response("r3", 3);
    bad_rating.answer = Some(Answer::Rating(9));
    let mut no_id = response("", 3);
    no_id.item_id = "S02".into();
    let batch = IngestRequest {
        batch_id: 1,
        responses: vec![
            response("r1", 4),
            bad_scale,
            bad_rating,
            no_id,
            response("r1", 4),
        ],
    };
    let ack = ingest_once(&mut client, batch.clone()).await.expect("ack");
    assert_eq!(
        (ack.batch_id, ack.accepted, ack.duplicate, ack.rejected),
        (1, 1, 1, 3)
    );
    let fields: Vec<(u32, &str, i32)> = ack
        .rejections
        .iter()
        .map(|r| (r.index, r.field.as_str(), r.code))
        .collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(
        fields,
        vec![
            (1, "responses[1].scale", invalid),
            (2, "responses[2].rating", invalid),
            (3, "responses[3].response_id", invalid)
        ]
    );
    assert!(ack.rejections[0].reason.contains("42"));

    // Resending the batch stores nothing new.
    let again = ingest_once(
        &mut client,
        IngestRequest {
            batch_id: 2,
            ..batch
        },
    )
    .await
    .expect("ack");
    assert_eq!((again.accepted, again.duplicate, again.rejected), (0, 2, 3));
    let summary = client
        .get_summary(GetSummaryRequest::default())
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("s");
    assert_eq!((summary.responses, summary.revision), (1, 1));

    // A batch without an id ends the stream with INVALID_ARGUMENT naming it.
    let status = ingest_once(
        &mut client,
        IngestRequest {
            batch_id: 0,
            responses: vec![response("r9", 1)],
        },
    )
    .await
    .expect_err("batch_id 0 is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("batch_id:"),
        "{}",
        status.message()
    );

    let status = client
        .get_summary(GetSummaryRequest {
            study_id: "x".repeat(300),
        })
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("study_id:"),
        "{}",
        status.message()
    );
    analyzer.shutdown().await.expect("stops");
}

#[tokio::test]
async fn the_collector_names_bad_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer = analyzer_at(loopback(), &dir.path().join("a.sqlite")).await;
    let ctx = run_context(dir.path(), &url(analyzer.addr)).await;
    let collector = careers_collector::server::start(loopback(), ctx)
        .await
        .expect("collector");
    let mut client = CollectorServiceClient::connect(url(collector.addr))
        .await
        .expect("connect");

    let status = client
        .create_study(CreateStudyRequest {
            request_id: String::new(),
            spec: Some(paper_spec("x", 1)),
        })
        .await
        .expect_err("no request id");
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "request_id: must not be empty")
    );

    let mut spec = paper_spec("x", 1);
    spec.instruments = vec!["onet-ip-sf".into(), "strong-interest-inventory".into()];
    let status = client
        .create_study(CreateStudyRequest {
            request_id: "r".into(),
            spec: Some(spec),
        })
        .await
        .expect_err("unknown instrument");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("spec.instruments[1]:"),
        "{}",
        status.message()
    );

    let mut spec = paper_spec("x", 1);
    if let Some(careers_proto::v1::respondent_spec::Settings::Simulated(p)) =
        &mut spec.respondents[2].settings
    {
        p.interest.truncate(5);
    }
    let status = client
        .create_study(CreateStudyRequest {
            request_id: "r".into(),
            spec: Some(spec),
        })
        .await
        .expect_err("bad profile");
    assert!(
        status
            .message()
            .starts_with("spec.respondents[2].simulated.interest:"),
        "{}",
        status.message()
    );

    let status = client
        .get_study(GetStudyRequest {
            study_id: "nope".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .list_studies(ListStudiesRequest {
            page_size: 10,
            page_token: "garbage".into(),
        })
        .await
        .expect_err("bad token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("page_token:"));

    let instruments = client
        .list_instruments(ListInstrumentsRequest {})
        .await
        .expect("list")
        .into_inner()
        .instruments;
    let ids: Vec<&str> = instruments
        .iter()
        .map(|i| i.instrument_id.as_str())
        .collect();
    assert_eq!(ids, vec!["onet-ip-sf", "onet-ip-sf-competence"]);
    assert_eq!(instruments[0].items.len(), 60);
    collector.shutdown().await.expect("stops");
    analyzer.shutdown().await.expect("stops");
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url(addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

async fn reflected_services(addr: std::net::SocketAddr) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    match stream
        .next()
        .await
        .expect("a reply")
        .expect("ok")
        .message_response
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

async fn health(addr: std::net::SocketAddr, service: &str) -> i32 {
    let mut client = HealthClient::new(channel(addr).await);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

#[tokio::test]
async fn both_servers_report_health_and_reflect_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let analyzer = analyzer_at(loopback(), &dir.path().join("a.sqlite")).await;
    let ctx = run_context(dir.path(), &url(analyzer.addr)).await;
    let collector = careers_collector::server::start(loopback(), ctx)
        .await
        .expect("collector");

    assert_eq!(
        health(analyzer.addr, "careers.v1.AnalyzerService").await,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health(collector.addr, "careers.v1.CollectorService").await,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health(analyzer.addr, "").await,
        ServingStatus::Serving as i32
    );
    // Each server advertises what it serves, so the two together list both
    // services; the types of the whole API are described by either.
    for (addr, own, other) in [
        (
            analyzer.addr,
            "careers.v1.AnalyzerService",
            "careers.v1.CollectorService",
        ),
        (
            collector.addr,
            "careers.v1.CollectorService",
            "careers.v1.AnalyzerService",
        ),
    ] {
        let mut services = reflected_services(addr).await;
        services.sort();
        assert_eq!(
            services,
            vec![
                own.to_string(),
                "grpc.health.v1.Health".to_string(),
                "grpc.reflection.v1.ServerReflection".to_string(),
            ],
            "{own} at {addr} advertises {other}?"
        );
    }
    collector.shutdown().await.expect("stops");
    analyzer.shutdown().await.expect("stops");
}
