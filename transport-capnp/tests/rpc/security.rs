//! The wire under attack: what an unauthenticated connection may cost, connection caps,
//! roles, the failed-login rate limit, and TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use shoal_core::api::{
    ApiError, ConfigNodeApi, CreateRegionRequest, DataNodeApi, MaintainTask, MaintainTaskKind,
};
use shoal_core::model::{Epoch, TaskId};
use shoal_transport_capnp::shoal_capnp::{bootstrap, error, login_reply};
use shoal_transport_capnp::{
    CapnpConfigNodeClient, CapnpDataNodeClient, ClientOptions, ClientTls, ConnectionLimits,
    LoginRateLimit, Role, RpcRuntime, ServedApis, ServerHandle, ServerOptions, ServerSecrets,
    ServerTls,
};

use super::fake::{FakeConfigNode, FakeDataNode};
use super::{data_region, db, role_options};

const INTERNAL: &str = "internal-secret";
const ADMIN: &str = "admin-secret";

struct Served {
    server: ServerHandle,
    data_node: Arc<FakeDataNode>,
    config_node: Arc<FakeConfigNode>,
}

fn serve(options: ServerOptions) -> Served {
    let runtime = RpcRuntime::start("sec-server").expect("rpc thread");
    let data_node = Arc::new(FakeDataNode::default());
    let config_node = Arc::new(FakeConfigNode::default());
    let apis = ServedApis {
        data_node: Some(data_node.clone()),
        config_node: Some(config_node.clone()),
        ..ServedApis::default()
    };
    let server = runtime
        .serve(
            "127.0.0.1:0",
            ServerSecrets::new(INTERNAL, ADMIN),
            apis,
            options,
        )
        .expect("serve");
    Served {
        server,
        data_node,
        config_node,
    }
}

fn data_client(served: &Served, options: ClientOptions) -> CapnpDataNodeClient {
    let rt = RpcRuntime::start("sec-client").expect("rpc thread");
    CapnpDataNodeClient::new(&rt, &served.server.local_addr().to_string(), options).expect("client")
}

fn config_client(served: &Served, options: ClientOptions) -> CapnpConfigNodeClient {
    let rt = RpcRuntime::start("sec-client").expect("rpc thread");
    CapnpConfigNodeClient::new(&rt, &served.server.local_addr().to_string(), options)
        .expect("client")
}

/// Whether the server closes `stream` within `within` (EOF or reset on read; what it
/// writes first, e.g. an Abort message, is skipped).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_frame_header_announcing_a_big_message_before_login_closes_the_connection_at_once() {
    let served = serve(ServerOptions::default());
    let address = served.server.local_addr();
    let started = Instant::now();
    for announced_words in [(64u32 << 20) / 8, (1 << 20) / 8, (64 << 10) / 8 + 1] {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream
            .write_all(&[0u32.to_le_bytes(), announced_words.to_le_bytes()].concat())
            .expect("header");
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)),
            "{announced_words} words announced before login: not closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5), "not at once");
    wait_for("the connections to be counted closed", || {
        served.server.stats().closed_before_login == 3
    });
    // After login the normal limit applies: a 4 MiB write goes through.
    let client = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
    smol::block_on(async {
        let region = data_region(1);
        client
            .create_region(
                Epoch(1),
                CreateRegionRequest {
                    region,
                    database: db("big"),
                    peers: vec![],
                    generation: 0,
                },
            )
            .await
            .expect("create");
        assert_eq!(
            client.write_region(region, vec![7u8; 4 << 20]).await,
            Ok(4 << 20)
        );
        // Also when it is the very first call after login (the server's read of it began
        // before the login ran).
        for _ in 0..5 {
            let fresh = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
            assert!(fresh.write_region(region, vec![8u8; 2 << 20]).await.is_ok());
        }
    });
}

#[test]
fn a_connection_may_send_only_a_few_messages_before_login() {
    let served = serve(ServerOptions::default());
    let mut stream = TcpStream::connect(served.server.local_addr()).expect("connect");
    // Valid empty frames (one segment of zero words) are messages too: the 17th before any
    // login ends the connection.
    let empty = [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    for _ in 0..40 {
        let _ = stream.write_all(&empty);
    }
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
}

#[test]
fn the_65th_unauthenticated_connection_is_closed_at_once_and_logged_in_clients_are_served() {
    let served = serve(ServerOptions::default());
    let address = served.server.local_addr();
    let client = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
    smol::block_on(client.heartbeat(Epoch(1))).expect("logged in before the flood");
    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(address).expect("connect"))
        .collect();
    wait_for("64 connections waiting for login", || {
        served.server.stats().unauthenticated == 64
    });
    let mut extra = TcpStream::connect(address).expect("connect");
    let started = Instant::now();
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "65th kept"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "not at once");
    assert_eq!(served.server.stats().refused_unauthenticated_cap, 1);
    // The logged-in connection is still served, and the waiting ones still wait.
    smol::block_on(client.heartbeat(Epoch(1))).expect("served during the flood");
    assert!(!closed_within(&mut idle[0], Duration::from_millis(50)));
    idle.clear();
    wait_for("the waiting connections to be released", || {
        served.server.stats().unauthenticated == 0
    });
    // Room again: a new client logs in.
    let late = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
    smol::block_on(late.heartbeat(Epoch(1))).expect("served after the flood");
}

#[test]
fn past_the_connection_cap_new_connections_are_closed_at_once() {
    let served = serve(ServerOptions {
        connections: ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        },
        ..ServerOptions::default()
    });
    let a = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
    let b = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
    smol::block_on(async {
        a.heartbeat(Epoch(1)).await.expect("a");
        b.heartbeat(Epoch(1)).await.expect("b");
    });
    let mut third = TcpStream::connect(served.server.local_addr()).expect("connect");
    assert!(closed_within(&mut third, Duration::from_secs(5)));
    assert_eq!(served.server.stats().refused_connection_cap, 1);
    smol::block_on(a.heartbeat(Epoch(1))).expect("still served");
}

fn task() -> MaintainTask {
    MaintainTask {
        task_id: TaskId(7),
        kind: MaintainTaskKind::DeleteRegionPeer {
            region: data_region(1),
            generation: 0,
        },
    }
}

fn refusal(result: Result<impl std::fmt::Debug, ApiError>) -> String {
    match result {
        Err(ApiError::Refused(message)) => message,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_admin_login_cannot_submit_tasks_or_move_epochs_on_a_data_node() {
    let served = serve(ServerOptions::default());
    let admin = data_client(&served, role_options(Role::Admin, ADMIN));
    smol::block_on(async {
        let message = refusal(admin.submit_task(Epoch(1_000), task()).await);
        assert!(
            message.contains("admin") && message.contains("DataNode.submitTask"),
            "{message}"
        );
        refusal(admin.heartbeat(Epoch(1_000)).await);
        refusal(admin.ack_task(Epoch(1_000), TaskId(7)).await);
        refusal(admin.task_result(TaskId(7), None).await);
        refusal(admin.delete_region(Epoch(1_000), data_region(1)).await);
        // The load generator's writes are what an admin may do on a DataNode (the region
        // does not exist here: the call reaches the node and is answered by it).
        let _ = admin.write_region(data_region(1), vec![1, 2, 3]).await;
    });
    assert_eq!(
        served.data_node.calls(),
        ["write_region"],
        "a refused call reached the DataNode"
    );
    // The epoch did not move: a ConfigNode at epoch 1 is not fenced.
    let node = data_client(&served, role_options(Role::ConfigNode, INTERNAL));
    smol::block_on(node.heartbeat(Epoch(1))).expect("epoch 1 still current");
}

#[test]
fn a_data_node_login_cannot_call_the_admin_api_and_secrets_are_per_role() {
    let served = serve(ServerOptions::default());
    let data_node = config_client(&served, role_options(Role::DataNode, INTERNAL));
    smol::block_on(async {
        let message = refusal(data_node.list_databases().await);
        assert!(message.contains("ConfigNode.listDatabases"), "{message}");
        refusal(data_node.delete_database(db("x"), None).await);
        // What a DataNode needs works.
        data_node
            .register_data_node(None, "10.0.0.1:1".into())
            .await
            .expect("register");
        // An admin may not register DataNodes.
        let admin = config_client(&served, role_options(Role::Admin, ADMIN));
        refusal(admin.register_data_node(None, "10.0.0.2:1".into()).await);
        admin.list_databases().await.expect("admin API");
        // Each role presents its own secret: the other one is wrong.
        let swapped = config_client(&served, role_options(Role::Admin, INTERNAL));
        let message = refusal(swapped.list_databases().await);
        assert!(message.contains("wrong admin secret"), "{message}");
        assert!(
            !message.contains(INTERNAL),
            "a secret in an error: {message}"
        );
        let swapped = data_client(&served, role_options(Role::ConfigNode, ADMIN));
        let message = refusal(swapped.heartbeat(Epoch(1)).await);
        assert!(message.contains("wrong internal secret"), "{message}");
    });
    assert_eq!(served.config_node.request_keys(), vec![]);
}

/// Logs in on a raw connection with `role_code` (0: none, as older clients send).
fn raw_login(address: SocketAddr, secret: &str, role_code: u8) -> Result<(), ApiError> {
    smol::block_on(async {
        let stream = smol::net::TcpStream::connect(address)
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let network = twoparty::VatNetwork::new(
            futures_lite::io::BufReader::new(stream.clone()),
            futures_lite::io::BufWriter::new(stream),
            Side::Client,
            capnp::message::ReaderOptions::new(),
        );
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let boot: bootstrap::Client = rpc.bootstrap(Side::Server);
        let login = async {
            let mut request = boot.login_request();
            request.get().set_secret(secret);
            request.get().set_role(role_code);
            let reply = request
                .send()
                .promise
                .await
                .map_err(|e| ApiError::Unreachable(e.to_string()))?;
            let reply = reply
                .get()
                .and_then(|r| r.get_reply())
                .map_err(|e| ApiError::Malformed(e.to_string()))?;
            match reply.which() {
                Ok(login_reply::Services(_)) => Ok(()),
                Ok(login_reply::Error(e)) => {
                    let e = e.map_err(|e| ApiError::Malformed(e.to_string()))?;
                    Err(match e.which() {
                        Ok(error::Refused(t)) => ApiError::Refused(
                            t.ok().and_then(|t| t.to_string().ok()).unwrap_or_default(),
                        ),
                        Ok(error::Remote(r)) => ApiError::Remote {
                            message: r
                                .get_message()
                                .ok()
                                .and_then(|t| t.to_string().ok())
                                .unwrap_or_default(),
                            retryable: r.get_retryable(),
                        },
                        _ => ApiError::Malformed("another error".into()),
                    })
                }
                Err(e) => Err(ApiError::Malformed(e.to_string())),
            }
        };
        futures_lite::future::or(login, async {
            let _ = rpc.await;
            Err(ApiError::Unreachable("connection ended".into()))
        })
        .await
    })
}

#[test]
fn a_login_without_a_role_is_refused_with_a_clear_error() {
    let served = serve(ServerOptions::default());
    let address = served.server.local_addr();
    let message = refusal(raw_login(address, INTERNAL, 0));
    assert!(message.contains("names no role"), "{message}");
    refusal(raw_login(address, ADMIN, 9));
    raw_login(address, ADMIN, Role::Admin.code()).expect("with a role");
}

#[test]
fn failed_logins_are_rate_limited_per_address_and_a_correct_secret_still_works() {
    let rate = LoginRateLimit {
        burst: 5,
        refill_every: Duration::from_millis(300),
        warn_window: Duration::from_secs(10),
    };
    let served = serve(ServerOptions {
        login_rate: rate,
        ..ServerOptions::default()
    });
    let address = served.server.local_addr();
    let started = Instant::now();
    let mut throttled = 0;
    for _ in 0..1_000 {
        match raw_login(address, "guess", Role::Admin.code()) {
            Err(ApiError::Refused(_)) => {}
            Err(ApiError::Remote {
                retryable: true,
                message,
            }) => {
                assert!(message.contains("too many failed logins"), "{message}");
                throttled += 1;
            }
            other => panic!("a wrong secret got {other:?}"),
        }
    }
    let stats = served.server.stats();
    let refills = (started.elapsed().as_millis() / 300) as u64 + 1;
    assert!(
        stats.failed_logins <= 5 + refills,
        "{} secrets checked in {:?}",
        stats.failed_logins,
        started.elapsed()
    );
    assert_eq!(stats.throttled_logins, throttled);
    assert!(throttled >= 900, "{throttled} throttled");
    eprintln!(
        "1000 wrong logins in {:?}: {} checked, {throttled} refused unchecked",
        started.elapsed(),
        stats.failed_logins
    );
    // A correct secret from the same address works once a token is back (what a real
    // client's retry of the retryable refusal does).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match raw_login(address, ADMIN, Role::Admin.code()) {
            Ok(()) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("a correct secret after failures: {e:?}"),
        }
    }
}

/// A CA and leaf certificates for TLS tests.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA named `ca` with leaves `names`, under a temp dir.
    fn new(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        make_ca(dir.path(), names);
        Self { dir }
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    fn server(&self, name: &str, mutual: bool) -> Arc<ServerTls> {
        let ca = self.path("ca.pem");
        Arc::new(
            ServerTls::from_pem_files(
                &self.path(&format!("{name}.pem")),
                &self.path(&format!("{name}.key")),
                mutual.then_some(ca.as_path()),
            )
            .expect("server tls"),
        )
    }

    fn client(&self, identity: Option<&str>) -> ClientTls {
        let files = identity.map(|n| {
            (
                self.path(&format!("{n}.pem")),
                self.path(&format!("{n}.key")),
            )
        });
        ClientTls::from_pem_files(
            &self.path("ca.pem"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .expect("client tls")
    }
}

fn make_ca(dir: &Path, names: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    let issuer = Issuer::new(ca, &ca_key);
    for name in names {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
}

fn tls_served(pki: &Pki, mutual: bool) -> Served {
    serve(ServerOptions {
        tls: Some(pki.server("node", mutual)),
        ..ServerOptions::default()
    })
}

#[test]
fn tls_with_client_certificates_serves_calls() {
    let pki = Pki::new(&["node", "client"]);
    let served = tls_served(&pki, true);
    let client = data_client(
        &served,
        role_options(Role::ConfigNode, INTERNAL).with_tls(Some(pki.client(Some("client")))),
    );
    smol::block_on(async {
        client.heartbeat(Epoch(1)).await.expect("over TLS");
        let bytes = vec![9u8; 3 << 20];
        client
            .create_region(
                Epoch(1),
                CreateRegionRequest {
                    region: data_region(2),
                    database: db("tls"),
                    peers: vec![],
                    generation: 0,
                },
            )
            .await
            .expect("create");
        assert_eq!(
            client.write_region(data_region(2), bytes).await,
            Ok(3 << 20)
        );
    });
}

#[test]
fn a_plaintext_client_to_a_tls_node_is_refused_saying_so() {
    let pki = Pki::new(&["node"]);
    let served = tls_served(&pki, false);
    let client = config_client(&served, role_options(Role::Admin, ADMIN));
    let started = Instant::now();
    let error = smol::block_on(client.list_databases()).expect_err("plaintext");
    assert!(
        matches!(&error, ApiError::Refused(m) if m.contains("requires TLS")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(served.server.stats().tls_handshake_failures, 1);
}

#[test]
fn a_certificate_from_another_ca_is_refused_on_either_side() {
    let pki = Pki::new(&["node", "client"]);
    let other = Pki::new(&["node", "client"]);
    // The client trusts another CA: the node's certificate is refused.
    let served = tls_served(&pki, true);
    let client = data_client(
        &served,
        role_options(Role::ConfigNode, INTERNAL).with_tls(Some(other.client(Some("client")))),
    );
    let error = smol::block_on(client.heartbeat(Epoch(1))).expect_err("untrusted node");
    assert!(
        matches!(&error, ApiError::Refused(m) if m.contains("does not trust")),
        "{error:?}"
    );
    // The client trusts the node's CA but shows a certificate from another: refused by the
    // node (mutual TLS), and so is a client with no certificate.
    let foreign_identity = {
        let ca = pki.path("ca.pem");
        let (cert, key) = (other.path("client.pem"), other.path("client.key"));
        ClientTls::from_pem_files(&ca, Some((&cert, &key))).expect("client tls")
    };
    for tls in [foreign_identity, pki.client(None)] {
        let client = data_client(
            &served,
            role_options(Role::ConfigNode, INTERNAL).with_tls(Some(tls)),
        );
        let error = smol::block_on(client.heartbeat(Epoch(1))).expect_err("untrusted client");
        assert!(
            matches!(&error, ApiError::Refused(m) if m.contains("refused this client's certificate")),
            "{error:?}"
        );
        assert!(!error.is_retryable());
    }
    assert!(served.data_node.calls().is_empty());
}
