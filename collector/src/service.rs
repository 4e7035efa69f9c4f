//! The gRPC `CollectorService`: thin, maps requests to the journal and runner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use careers_proto::v1::collector_service_server::CollectorService;
use careers_proto::v1::{
    CancelStudyRequest, CancelStudyResponse, CreateStudyRequest, CreateStudyResponse,
    GetStudyRequest, GetStudyResponse, ListInstrumentsRequest, ListInstrumentsResponse,
    ListStudiesRequest, ListStudiesResponse, Study, StudySpec, StudyState, WatchStudyRequest,
    WatchStudyResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::CollectorError;
use crate::journal::StudyRow;
use crate::progress::Progress;
use crate::runner::{self, RunContext};

#[derive(Debug)]
struct Running {
    progress: Arc<Progress>,
    cancel: watch::Sender<bool>,
}

/// Where studies created over gRPC may take API keys from. Whoever can call
/// `CreateStudy` chooses the respondents' `base_url`, so a key the server can
/// read is a key the caller can send anywhere: by default none may be used
/// (keyless local servers such as Ollama still work), and an operator opens
/// exactly the key files and variables meant for studies. Study files run by
/// `careers-collector run` are the user's own and are not restricted.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// Key files must lie in this directory (a mounted Kubernetes secret).
    pub dir: Option<std::path::PathBuf>,
    /// Environment variables that may hold keys.
    pub env: Vec<String>,
}

impl KeySources {
    /// Checks every respondent's key source; the error names the field.
    pub fn check(&self, spec: &StudySpec) -> Result<(), CollectorError> {
        use careers_proto::v1::respondent_spec::Settings;
        for (i, r) in spec.respondents.iter().enumerate() {
            let Some(Settings::Api(api)) = &r.settings else {
                continue;
            };
            let prefix = format!("spec.respondents[{i}]");
            if !api.api_key_env.is_empty() && !self.env.contains(&api.api_key_env) {
                return Err(CollectorError::invalid(
                    format!("{prefix}.api_key_env"),
                    format!(
                        "{} is not among the variables this server lends to studies (--key-env)",
                        api.api_key_env
                    ),
                ));
            }
            if !api.api_key_file.is_empty() {
                let field = format!("{prefix}.api_key_file");
                let Some(dir) = &self.dir else {
                    return Err(CollectorError::invalid(
                        field,
                        "this server takes no key files (start it with --key-dir)",
                    ));
                };
                // Resolved, so neither `..` nor a symbolic link leads out.
                let inside = std::fs::canonicalize(&api.api_key_file)
                    .ok()
                    .zip(std::fs::canonicalize(dir).ok())
                    .is_some_and(|(file, dir)| file.starts_with(dir));
                if !inside {
                    return Err(CollectorError::invalid(
                        field,
                        format!(
                            "not a file in this server's key directory {}",
                            dir.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The collector's shared state.
#[derive(Debug)]
pub struct Collector {
    ctx: RunContext,
    keys: KeySources,
    running: Mutex<HashMap<String, Running>>,
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

impl Collector {
    /// State over a run context; studies created over gRPC take keys only
    /// from `keys`.
    pub fn new(ctx: RunContext, keys: KeySources) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            keys,
            running: Mutex::new(HashMap::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn study_message(&self, row: StudyRow) -> Result<Study, CollectorError> {
        let live = self
            .running()
            .get(&row.study_id)
            .map(|r| r.progress.clone());
        let progress = match live {
            Some(p) => p.snapshot(),
            None => runner::load_progress(&self.ctx.journal, &row.spec)
                .await?
                .snapshot(),
        };
        Ok(Study {
            study_id: row.study_id,
            spec: Some(row.spec),
            state: row.state as i32,
            progress: Some(progress),
            error: row.error,
            create_time: Some(timestamp(row.created_ms)),
            update_time: Some(timestamp(row.updated_ms)),
        })
    }

    async fn get(&self, study_id: &str) -> Result<Study, CollectorError> {
        if study_id.is_empty() {
            return Err(CollectorError::invalid("study_id", "must not be empty"));
        }
        let row = self
            .ctx
            .journal
            .study(study_id)
            .await?
            .ok_or_else(|| CollectorError::NotFound(study_id.to_string()))?;
        self.study_message(row).await
    }

    /// Creates (or finds) a study and starts it unless it is running or finished.
    pub async fn create(
        self: &Arc<Self>,
        request: CreateStudyRequest,
    ) -> Result<Study, CollectorError> {
        if request.request_id.is_empty() {
            return Err(CollectorError::invalid("request_id", "must not be empty"));
        }
        if request.request_id.len() > 256 {
            return Err(CollectorError::invalid(
                "request_id",
                "longer than 256 bytes",
            ));
        }
        let spec = request
            .spec
            .ok_or_else(|| CollectorError::invalid("spec", "must be set"))?;
        self.keys.check(&spec)?;
        let progress = runner::prepare(&self.ctx, &request.request_id, &spec).await?;
        let row = self
            .ctx
            .journal
            .study(&spec.name)
            .await?
            .ok_or_else(|| CollectorError::NotFound(spec.name.clone()))?;
        if matches!(row.state, StudyState::Running | StudyState::Unspecified) {
            self.start_run(spec.clone(), progress);
        }
        self.get(&spec.name).await
    }

    /// Runs a prepared study in the background unless it is running already.
    fn start_run(self: &Arc<Self>, spec: StudySpec, progress: Arc<Progress>) {
        let cancel_rx = {
            let mut running = self.running();
            if running.contains_key(&spec.name) {
                return;
            }
            let (cancel, cancel_rx) = watch::channel(false);
            running.insert(
                spec.name.clone(),
                Running {
                    progress: progress.clone(),
                    cancel,
                },
            );
            cancel_rx
        };
        let this = self.clone();
        tokio::spawn(async move {
            let result = runner::run(&this.ctx, &spec, progress, cancel_rx).await;
            if let Err(e) = &result {
                tracing::error!(study = %spec.name, error = %e, "study failed");
                let _ = this
                    .ctx
                    .journal
                    .set_state(&spec.name, StudyState::Failed, &e.to_string())
                    .await;
            }
            this.running().remove(&spec.name);
        });
    }

    /// Resumes the studies the journal has as running: a server stopped (or
    /// killed) in the middle of a study carries on with it when it starts
    /// again. A study that can no longer start (its key is gone, its
    /// instrument was removed) is marked failed with the reason.
    pub async fn resume_running(self: &Arc<Self>) -> Result<usize, CollectorError> {
        let mut resumed = 0;
        for study_id in self
            .ctx
            .journal
            .studies_in_state(StudyState::Running)
            .await?
        {
            let Some(row) = self.ctx.journal.study(&study_id).await? else {
                continue;
            };
            match runner::prepare(&self.ctx, "", &row.spec).await {
                Ok(progress) => {
                    tracing::info!(study = %study_id, "resuming study");
                    self.start_run(row.spec, progress);
                    resumed += 1;
                }
                Err(e) => {
                    let message = format!("cannot resume: {}", CollectorError::from(e));
                    tracing::error!(study = %study_id, error = %message, "study not resumed");
                    self.ctx
                        .journal
                        .set_state(&study_id, StudyState::Failed, &message)
                        .await?;
                }
            }
        }
        Ok(resumed)
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct CollectorGrpc {
    collector: Arc<Collector>,
    shutdown: watch::Receiver<bool>,
}

impl CollectorGrpc {
    /// A service over `collector`; watch streams end when `shutdown` turns true.
    pub fn new(collector: Arc<Collector>, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            collector,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl CollectorService for CollectorGrpc {
    type WatchStudyStream = ReceiverStream<Result<WatchStudyResponse, Status>>;

    async fn create_study(
        &self,
        request: Request<CreateStudyRequest>,
    ) -> Result<Response<CreateStudyResponse>, Status> {
        let study = self.collector.create(request.into_inner()).await?;
        Ok(Response::new(CreateStudyResponse { study: Some(study) }))
    }

    async fn get_study(
        &self,
        request: Request<GetStudyRequest>,
    ) -> Result<Response<GetStudyResponse>, Status> {
        let study = self.collector.get(&request.into_inner().study_id).await?;
        Ok(Response::new(GetStudyResponse { study: Some(study) }))
    }

    async fn list_studies(
        &self,
        request: Request<ListStudiesRequest>,
    ) -> Result<Response<ListStudiesResponse>, Status> {
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => 50,
            n if n > 1000 => {
                return Err(
                    CollectorError::invalid("page_size", format!("{n} is above 1000")).into(),
                );
            }
            n => n,
        };
        // The token names the last study of the previous page, so studies
        // created between two calls never repeat or skip an older one.
        let after: Option<(i64, &str)> = if request.page_token.is_empty() {
            None
        } else {
            Some(
                request
                    .page_token
                    .strip_prefix("a")
                    .and_then(|t| t.split_once(':'))
                    .and_then(|(ms, id)| Some((ms.parse().ok()?, id)))
                    .ok_or_else(|| {
                        CollectorError::invalid("page_token", "not a token from this service")
                    })?,
            )
        };
        let rows = self
            .collector
            .ctx
            .journal
            .studies(after, page_size + 1)
            .await
            .map_err(CollectorError::from)?;
        let more = rows.len() > page_size as usize;
        let mut studies = Vec::new();
        let mut last = None;
        for row in rows.into_iter().take(page_size as usize) {
            last = Some((row.created_ms, row.study_id.clone()));
            studies.push(self.collector.study_message(row).await?);
        }
        let next_page_token = match last {
            Some((ms, id)) if more => format!("a{ms}:{id}"),
            _ => String::new(),
        };
        Ok(Response::new(ListStudiesResponse {
            studies,
            next_page_token,
        }))
    }

    async fn cancel_study(
        &self,
        request: Request<CancelStudyRequest>,
    ) -> Result<Response<CancelStudyResponse>, Status> {
        let study_id = request.into_inner().study_id;
        let study = self.collector.get(&study_id).await?;
        let cancel = self
            .collector
            .running()
            .get(&study_id)
            .map(|r| r.cancel.clone());
        if let Some(cancel) = cancel {
            let _ = cancel.send(true);
        }
        if study.state == StudyState::Running as i32 {
            // Only a study still running becomes cancelled: one that completed
            // (or failed) in the meantime keeps its real outcome.
            self.collector
                .ctx
                .journal
                .set_state_from(&study_id, StudyState::Running, StudyState::Cancelled, "")
                .await
                .map_err(CollectorError::from)?;
        }
        Ok(Response::new(CancelStudyResponse {
            study: Some(self.collector.get(&study_id).await?),
        }))
    }

    async fn watch_study(
        &self,
        request: Request<WatchStudyRequest>,
    ) -> Result<Response<Self::WatchStudyStream>, Status> {
        let request = request.into_inner();
        let first = self.collector.get(&request.study_id).await?;
        let interval = Duration::from_millis(match request.min_interval_ms {
            0 => 500,
            ms => u64::from(ms),
        });
        let (tx, rx) = mpsc::channel(4);
        let collector = self.collector.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut study = first;
            loop {
                let finished = study.state != StudyState::Running as i32;
                if tx
                    .send(Ok(WatchStudyResponse { study: Some(study) }))
                    .await
                    .is_err()
                    || finished
                {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tx.closed() => break,
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                study = match collector.get(&request.study_id).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_instruments(
        &self,
        _request: Request<ListInstrumentsRequest>,
    ) -> Result<Response<ListInstrumentsResponse>, Status> {
        let instruments = self
            .collector
            .ctx
            .catalog
            .iter()
            .map(|i| i.to_proto())
            .collect();
        Ok(Response::new(ListInstrumentsResponse { instruments }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use careers_proto::v1::respondent_spec::Settings;
    use careers_proto::v1::{ApiSettings, RespondentSpec};

    fn spec_with(api: ApiSettings) -> StudySpec {
        StudySpec {
            name: "s".into(),
            respondents: vec![
                RespondentSpec::default(),
                RespondentSpec {
                    settings: Some(Settings::Api(api)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn field(e: CollectorError) -> String {
        match e {
            CollectorError::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grpc_studies_take_keys_only_where_the_operator_allows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("keys");
        std::fs::create_dir(&keys_dir).expect("mkdir");
        std::fs::write(keys_dir.join("openai"), "sk-1").expect("key");
        std::fs::write(dir.path().join("token"), "secret").expect("other file");
        let file = |p: &std::path::Path| {
            spec_with(ApiSettings {
                api_key_file: p.display().to_string(),
                ..Default::default()
            })
        };
        let env = |name: &str| {
            spec_with(ApiSettings {
                api_key_env: name.into(),
                ..Default::default()
            })
        };
        let keyless = spec_with(ApiSettings::default());

        // By default: no key file, no variable; keyless servers are fine.
        let none = KeySources::default();
        assert_eq!(
            field(
                none.check(&file(&keys_dir.join("openai")))
                    .expect_err("no dir")
            ),
            "spec.respondents[1].api_key_file"
        );
        assert_eq!(
            field(none.check(&env("OPENAI_API_KEY")).expect_err("no env")),
            "spec.respondents[1].api_key_env"
        );
        none.check(&keyless).expect("keyless");

        let open = KeySources {
            dir: Some(keys_dir.clone()),
            env: vec!["OPENAI_API_KEY".into()],
        };
        open.check(&file(&keys_dir.join("openai")))
            .expect("in the dir");
        open.check(&env("OPENAI_API_KEY"))
            .expect("allowed variable");
        for outside in [
            dir.path().join("token"),
            keys_dir.join("../token"),
            keys_dir.join("missing"),
        ] {
            assert_eq!(
                field(open.check(&file(&outside)).expect_err("outside")),
                "spec.respondents[1].api_key_file",
                "{}",
                outside.display()
            );
        }
        assert_eq!(
            field(open.check(&env("DATABASE_PASSWORD")).expect_err("not lent")),
            "spec.respondents[1].api_key_env"
        );
    }
}
