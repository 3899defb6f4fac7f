//! Prometheus metrics and the ConfigNode's status page, served over HTTP.
//!
//! Two kinds of numbers: *events* that only the code on a hot path sees (a step's duration,
//! a commit's latency, a task's duration, an fsync's latency, an RPC's outcome) arrive through
//! core's metrics seam ([`shoal_core::metrics`]) and land in process-wide histograms and
//! counters; *levels* that the state already knows (procedures by type and status, queue
//! depths, the epoch, DataNode status, replicas and bytes) are read from the node when
//! `/metrics` is scraped, so they can never drift from the truth.
//!
//! **Decision: tiny_http on its own thread.** The endpoint serves a handful of scrapes a
//! minute; hyper would do, but it needs tokio's sync types even without tokio's runtime, and
//! a hand-written HTTP parser is exactly the kind of code we should not own. tiny_http is
//! small, synchronous and has no async runtime at all. Requests are handled on short-lived
//! threads (at most [`MAX_IN_FLIGHT`] at once; more are dropped), so a slow reader cannot
//! stall the next scrape. Bind it to loopback or a monitoring network: like every Prometheus
//! endpoint it has no authentication, and it exposes only counts and names.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use shoal_core::confignode::ConfigNode;
use shoal_core::datanode::DataNode;
use shoal_core::metrics::{MetricEvent, MetricsSink};
use shoal_core::procedure::ProcedureView;
use shoal_core::state::DataNodeStatus;

use crate::error::CliError;
use crate::status_page;

/// Requests served at once; further connections are closed unanswered.
pub const MAX_IN_FLIGHT: usize = 8;

/// `Content-Type` of what `/metrics` serves: prometheus-client's text encoder writes
/// OpenMetrics 1.0 text (`# UNIT` lines, `_total` counter samples, a final `# EOF`), which
/// Prometheus reads when told so (it would also read it as the 0.0.4 text format, whose
/// parser ignores those comment lines, but saying what it is lets the scraper pick the
/// right parser).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets: 50 µs doubling to about 26 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    procedure: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    file: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    outcome: &'static str,
}

/// The process-wide event families (see the module docs); installed as core's sink once.
#[derive(Clone)]
struct EventMetrics {
    steps: HistogramFamily<StepLabels>,
    commits: HistogramFamily<OutcomeLabels>,
    tasks: HistogramFamily<TaskLabels>,
    fsyncs: HistogramFamily<FileLabels>,
    rpcs: Family<RpcLabels, Counter>,
}

impl EventMetrics {
    fn new() -> Self {
        Self {
            steps: Family::new_with_constructor(latency_histogram),
            commits: Family::new_with_constructor(latency_histogram),
            tasks: Family::new_with_constructor(latency_histogram),
            fsyncs: Family::new_with_constructor(latency_histogram),
            rpcs: Family::default(),
        }
    }

    /// The process's event families, installing them as core's sink on first use.
    fn global() -> &'static EventMetrics {
        static EVENTS: OnceLock<EventMetrics> = OnceLock::new();
        EVENTS.get_or_init(|| {
            let events = EventMetrics::new();
            shoal_core::metrics::install(Box::new(events.clone()));
            events
        })
    }

    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "shoal_procedure_step_duration",
            "Duration of one procedure step, its commit excluded",
            Unit::Seconds,
            self.steps.clone(),
        );
        registry.register_with_unit(
            "shoal_commit_duration",
            "Latency of one commit through consensus (ok = committed and applied)",
            Unit::Seconds,
            self.commits.clone(),
        );
        registry.register_with_unit(
            "shoal_datanode_task_duration",
            "Duration of a DataNode maintain task, by kind and outcome",
            Unit::Seconds,
            self.tasks.clone(),
        );
        registry.register_with_unit(
            "shoal_fsync_duration",
            "Latency of one fdatasync of the consensus log or the task journal",
            Unit::Seconds,
            self.fsyncs.clone(),
        );
        registry.register(
            "shoal_rpc_calls",
            "RPC calls this node served, by method and outcome (success, retry = a retryable error, failure)",
            self.rpcs.clone(),
        );
    }
}

impl MetricsSink for EventMetrics {
    fn record(&self, event: MetricEvent) {
        match event {
            MetricEvent::Step {
                procedure,
                outcome,
                duration,
            } => self
                .steps
                .get_or_create(&StepLabels {
                    procedure,
                    outcome: outcome.label(),
                })
                .observe(duration.as_secs_f64()),
            MetricEvent::Commit { ok, duration } => self
                .commits
                .get_or_create(&OutcomeLabels {
                    outcome: if ok { "ok" } else { "failed" },
                })
                .observe(duration.as_secs_f64()),
            MetricEvent::Task {
                kind,
                outcome,
                duration,
            } => self
                .tasks
                .get_or_create(&TaskLabels {
                    kind,
                    outcome: outcome.label(),
                })
                .observe(duration.as_secs_f64()),
            MetricEvent::Fsync { file, duration } => self
                .fsyncs
                .get_or_create(&FileLabels { file: file.label() })
                .observe(duration.as_secs_f64()),
            MetricEvent::Rpc { method, outcome } => {
                self.rpcs
                    .get_or_create(&RpcLabels {
                        method,
                        outcome: outcome.label(),
                    })
                    .inc();
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcedureLabels {
    r#type: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataNodeLabels {
    data_node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataNodeStatusLabels {
    data_node: String,
    address: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskStateLabels {
    state: &'static str,
}

fn status_label(status: DataNodeStatus) -> &'static str {
    match status {
        DataNodeStatus::Running => "running",
        DataNodeStatus::Unknown => "unknown",
        DataNodeStatus::Removing => "removing",
    }
}

/// Installs this process's event families as core's metrics sink (idempotent).
pub fn install_sink() {
    EventMetrics::global();
}

/// Levels read from a ConfigNode at scrape time.
struct ConfigNodeLevels {
    procedures: Family<ProcedureLabels, Gauge>,
    runnable: Gauge,
    waiting: Gauge,
    queue: Family<KindLabels, Gauge>,
    epoch: Gauge,
    leader: Gauge,
    data_nodes: Family<DataNodeStatusLabels, Gauge>,
    replicas: Family<DataNodeLabels, Gauge>,
    databases: Gauge,
    groups: Family<KindLabels, Gauge>,
}

impl ConfigNodeLevels {
    fn new(registry: &mut Registry) -> Self {
        let levels = Self {
            procedures: Family::default(),
            runnable: Gauge::default(),
            waiting: Gauge::default(),
            queue: Family::default(),
            epoch: Gauge::default(),
            leader: Gauge::default(),
            data_nodes: Family::default(),
            replicas: Family::default(),
            databases: Gauge::default(),
            groups: Family::default(),
        };
        registry.register(
            "shoal_procedures",
            "Recorded procedures by type and status",
            levels.procedures.clone(),
        );
        registry.register(
            "shoal_procedures_runnable",
            "Procedures running a step or queued for a worker",
            levels.runnable.clone(),
        );
        registry.register(
            "shoal_procedures_waiting",
            "Procedures sleeping, waiting for locks or for their children",
            levels.waiting.clone(),
        );
        registry.register(
            "shoal_maintain_queue_depth",
            "Queued replica creates and legacy deletions awaiting the cleaner",
            levels.queue.clone(),
        );
        registry.register(
            "shoal_leader_epoch",
            "The leader epoch this ConfigNode last knew",
            levels.epoch.clone(),
        );
        registry.register(
            "shoal_is_leader",
            "1 if this ConfigNode leads",
            levels.leader.clone(),
        );
        registry.register(
            "shoal_datanode_status",
            "Registered DataNodes: 1 for the status each is in",
            levels.data_nodes.clone(),
        );
        registry.register(
            "shoal_datanode_published_replicas",
            "Replicas of published region groups placed on each DataNode",
            levels.replicas.clone(),
        );
        registry.register(
            "shoal_databases",
            "Databases, including those being deleted",
            levels.databases.clone(),
        );
        registry.register(
            "shoal_region_groups",
            "Published region groups by kind",
            levels.groups.clone(),
        );
        levels
    }

    fn refresh(&self, node: &ConfigNode) {
        self.procedures.clear();
        let (mut runnable, mut waiting) = (0, 0);
        for info in node.list_procedures() {
            match info.status {
                ProcedureView::Running | ProcedureView::RollingBack => runnable += 1,
                ProcedureView::Waiting | ProcedureView::Suspended => waiting += 1,
                _ => {}
            }
            self.procedures
                .get_or_create(&ProcedureLabels {
                    r#type: info.type_name,
                    status: status_page::view_label(info.status),
                })
                .inc();
        }
        self.runnable.set(runnable);
        self.waiting.set(waiting);

        let leadership = node.consensus().leadership().get();
        self.epoch.set(gauge_value(leadership.epoch.0));
        self.leader.set(i64::from(leadership.is_leader));

        let state = node.consensus().state();
        self.data_nodes.clear();
        self.replicas.clear();
        self.groups.clear();
        state.read(|s| {
            self.queue
                .get_or_create(&KindLabels { kind: "create" })
                .set(gauge_value(s.create_queue.len() as u64));
            self.queue
                .get_or_create(&KindLabels {
                    kind: "legacy_deletion",
                })
                .set(gauge_value(s.legacy_deletions.len() as u64));
            for node in s.data_nodes.values() {
                self.data_nodes
                    .get_or_create(&DataNodeStatusLabels {
                        data_node: node.location.id.to_string(),
                        address: node.location.address.clone(),
                        status: status_label(node.status),
                    })
                    .set(1);
            }
            for (node, count) in s.replica_counts() {
                self.replicas
                    .get_or_create(&DataNodeLabels {
                        data_node: node.to_string(),
                    })
                    .set(gauge_value(count as u64));
            }
            self.databases.set(gauge_value(s.databases.len() as u64));
            for (_, group) in s.region_groups() {
                let kind = match group.region.kind {
                    shoal_core::model::RegionKind::Schema => "schema",
                    shoal_core::model::RegionKind::Data => "data",
                };
                self.groups.get_or_create(&KindLabels { kind }).inc();
            }
        });
    }
}

/// Levels read from a DataNode at scrape time.
struct DataNodeLevels {
    regions: Gauge,
    bytes: Gauge,
    tasks: Family<TaskStateLabels, Gauge>,
    epoch: Gauge,
}

impl DataNodeLevels {
    fn new(registry: &mut Registry) -> Self {
        let levels = Self {
            regions: Gauge::default(),
            bytes: Gauge::default(),
            tasks: Family::default(),
            epoch: Gauge::default(),
        };
        registry.register(
            "shoal_datanode_regions",
            "Region replicas this DataNode holds",
            levels.regions.clone(),
        );
        registry.register_with_unit(
            "shoal_datanode_region",
            "Data held by this DataNode's replicas",
            Unit::Bytes,
            levels.bytes.clone(),
        );
        registry.register(
            "shoal_datanode_tasks",
            "Maintain tasks in this DataNode's result map: running, or finished and not yet acknowledged",
            levels.tasks.clone(),
        );
        registry.register(
            "shoal_datanode_highest_epoch",
            "The highest leader epoch this DataNode has seen",
            levels.epoch.clone(),
        );
        levels
    }

    fn refresh(&self, node: &DataNode) {
        if let Ok(usage) = smol::block_on(node.region_usage()) {
            self.regions.set(gauge_value(usage.regions));
            self.bytes.set(gauge_value(usage.bytes));
        }
        let counts = node.task_counts();
        self.tasks
            .get_or_create(&TaskStateLabels { state: "running" })
            .set(gauge_value(counts.running as u64));
        self.tasks
            .get_or_create(&TaskStateLabels { state: "finished" })
            .set(gauge_value(counts.terminal as u64));
        self.epoch.set(gauge_value(node.highest_epoch().0));
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The node a metrics endpoint reports on.
#[derive(Clone)]
pub enum MetricsSource {
    /// A ConfigNode: its levels, and the status page at `/`.
    ConfigNode(Arc<ConfigNode>),
    /// A DataNode: its replicas, bytes and tasks.
    DataNode(DataNode),
}

enum Levels {
    ConfigNode(Arc<ConfigNode>, ConfigNodeLevels),
    DataNode(DataNode, DataNodeLevels),
}

/// One node's registry: the process's event families plus the node's levels.
pub struct Exporter {
    registry: Registry,
    levels: Levels,
}

impl Exporter {
    /// An exporter for `source` (installs core's sink on first use in this process).
    pub fn new(source: MetricsSource) -> Self {
        let mut registry = Registry::default();
        EventMetrics::global().register(&mut registry);
        let levels = match source {
            MetricsSource::ConfigNode(node) => {
                Levels::ConfigNode(node, ConfigNodeLevels::new(&mut registry))
            }
            MetricsSource::DataNode(node) => {
                Levels::DataNode(node, DataNodeLevels::new(&mut registry))
            }
        };
        Self { registry, levels }
    }

    /// The Prometheus text exposition of every metric, levels read now.
    pub fn render_metrics(&self) -> String {
        match &self.levels {
            Levels::ConfigNode(node, levels) => levels.refresh(node),
            Levels::DataNode(node, levels) => levels.refresh(node),
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The HTML page served at `/`.
    pub fn render_page(&self) -> String {
        match &self.levels {
            Levels::ConfigNode(node, _) => {
                status_page::render(&status_page::Snapshot::of(node, unix_ms_now()))
            }
            Levels::DataNode(node, _) => status_page::render_datanode(node),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A running metrics endpoint; stopped when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Serves `/metrics` (and `/` and `/healthz`) for `source` on `listen` (`host:port`; port
    /// 0 picks a free one).
    pub fn start(listen: &str, source: MetricsSource) -> Result<Self, CliError> {
        let server = tiny_http::Server::http(listen)
            .map_err(|e| CliError::Node(format!("cannot serve metrics on {listen}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| CliError::Node(format!("metrics address {listen} is not IP")))?;
        let server = Arc::new(server);
        let exporter = Arc::new(Exporter::new(source));
        let thread = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(&server, &exporter))
                .map_err(|e| CliError::Node(format!("cannot start the metrics thread: {e}")))?
        };
        Ok(Self {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, exporter: &Arc<Exporter>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    for request in server.incoming_requests() {
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(request);
            continue;
        }
        let exporter = exporter.clone();
        let in_flight = in_flight.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-request".into())
            .spawn(move || {
                respond(request, &exporter);
                in_flight.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!("metrics request dropped: {e}");
        }
    }
}

fn respond(request: tiny_http::Request, exporter: &Exporter) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let (status, content_type, body) = match (request.method(), path.as_str()) {
        (tiny_http::Method::Get, "/metrics") => {
            (200, PROMETHEUS_CONTENT_TYPE, exporter.render_metrics())
        }
        (tiny_http::Method::Get, "/") => (200, "text/html; charset=utf-8", exporter.render_page()),
        (tiny_http::Method::Get, "/healthz") => (200, "text/plain; charset=utf-8", "ok\n".into()),
        (tiny_http::Method::Get, _) => (404, "text/plain; charset=utf-8", "not found\n".into()),
        _ => (
            405,
            "text/plain; charset=utf-8",
            "only GET is served\n".into(),
        ),
    };
    let header = tiny_http::Header::from_bytes("Content-Type", content_type)
        .expect("static header is valid");
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header);
    // A client that went away is not our problem.
    let _ = request.respond(response);
}
