//! Cap'n Proto through a node's server, over real loopback TCP, with the real DataNode and
//! ConfigNode (an in-process `TestCluster`) behind it:
//! - `capnp_request`: a logged-in client sends every method with its parameters corrupted
//!   (a mutated parameter struct: any field may hold any value, texts any bytes, lists any
//!   length, unions any discriminant) — what the server's decoders see from a hostile peer;
//! - `capnp_frames`: raw bytes on a fresh connection, seeded with a real bootstrap, login
//!   and pipelined calls — the RPC layer, framing, login and pre-login limits.
//!
//! After every 64 inputs (and at the end) a well-formed call must still be answered.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capnp::message::{Builder, ReaderOptions};
use capnp::traits::HasTypeId;
use capnp_rpc::{RpcSystem, rpc_capnp, rpc_twoparty_capnp::Side, twoparty};
use futures_lite::FutureExt;
use shoal_core::api::{ConfigNodeApi, DataNodeApi};
use shoal_nodes::service::ConfigNodeService;
use shoal_tests::cluster::{ClusterOptions, TestCluster};
use shoal_transport_capnp::shoal_capnp::{bootstrap, config_node, data_node, login_reply};
use shoal_transport_capnp::{
    Role, RpcRuntime, ServedApis, ServerHandle, ServerOptions, ServerSecrets,
};

use crate::Target;

const INTERNAL: &str = "fuzz-internal-secret";
const ADMIN: &str = "fuzz-admin-secret";
/// A call not answered within this is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// A real cluster served over Cap'n Proto.
struct Node {
    server: ServerHandle,
    _cluster: TestCluster,
    _runtime: RpcRuntime,
}

fn start_node() -> Result<Node, String> {
    let cluster = smol::block_on(TestCluster::start(ClusterOptions {
        data_nodes: 3,
        ..ClusterOptions::default()
    }));
    let data_node: Arc<dyn DataNodeApi> = Arc::new(
        cluster.data_nodes[0]
            .node()
            .ok_or("the test cluster's DataNode is not running")?,
    );
    let config_node: Arc<dyn ConfigNodeApi> = Arc::new(ConfigNodeService::new(cluster.leader()));
    let runtime = RpcRuntime::start("fuzz-server").map_err(|e| e.to_string())?;
    let server = runtime
        .serve(
            "127.0.0.1:0",
            ServerSecrets::new(INTERNAL, ADMIN),
            ServedApis {
                data_node: Some(data_node),
                config_node: Some(config_node),
                ..ServedApis::default()
            },
            ServerOptions::default(),
        )
        .map_err(|e| e.to_string())?;
    Ok(Node {
        server,
        _cluster: cluster,
        _runtime: runtime,
    })
}

/// A logged-in client: the data API as a ConfigNode, the admin API as admin, the
/// registration calls as a DataNode.
struct Client {
    ex: Rc<smol::LocalExecutor<'static>>,
    data: data_node::Client,
    admin: config_node::Client,
    registration: config_node::Client,
}

fn connect(address: SocketAddr) -> Result<Client, String> {
    let ex = Rc::new(smol::LocalExecutor::new());
    let stream =
        smol::block_on(smol::net::TcpStream::connect(address)).map_err(|e| e.to_string())?;
    let network = twoparty::VatNetwork::new(
        futures_lite::io::BufReader::new(stream.clone()),
        futures_lite::io::BufWriter::new(stream),
        Side::Client,
        ReaderOptions::new(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let boot: bootstrap::Client = rpc.bootstrap(Side::Server);
    ex.spawn(async move {
        let _ = rpc.await;
    })
    .detach();
    let services = |role: Role, secret: &str| {
        let mut request = boot.login_request();
        request.get().set_secret(secret);
        request.get().set_role(role.code());
        let ex = ex.clone();
        smol::block_on(ex.run(async move {
            let response = request.send().promise.await.map_err(|e| e.to_string())?;
            let reply = response
                .get()
                .and_then(|r| r.get_reply())
                .map_err(|e| e.to_string())?;
            match reply.which().map_err(|e| e.to_string())? {
                login_reply::Services(s) => {
                    let s = s.map_err(|e| e.to_string())?;
                    Ok((
                        s.get_data_node().map_err(|e| e.to_string())?,
                        s.get_config_node().map_err(|e| e.to_string())?,
                    ))
                }
                login_reply::Error(_) => Err(format!("login as {role} refused")),
            }
        }))
    };
    let (data, _) = services(Role::ConfigNode, INTERNAL)?;
    let (_, admin) = services(Role::Admin, ADMIN)?;
    let (_, registration) = services(Role::DataNode, INTERNAL)?;
    Ok(Client {
        ex,
        data,
        admin,
        registration,
    })
}

impl Client {
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        smol::block_on(self.ex.run(f.or(async {
            smol::Timer::after(CALL_LIMIT).await;
            Err(format!("a call was not answered within {CALL_LIMIT:?}"))
        })))
    }

    /// A well-formed call must be answered.
    fn health(&self) -> Result<(), String> {
        let request = self.admin.list_data_nodes_request();
        self.block_on(async {
            request
                .send()
                .promise
                .await
                .map(|_| ())
                .map_err(|e| format!("the server stopped answering: {e}"))
        })
    }
}

/// Methods, in the order of the input's first byte.
const METHODS: usize = 17;

/// A valid parameter struct of method `m` (the seed the fuzzer corrupts).
fn seed_params(m: usize) -> Vec<u8> {
    let mut message = Builder::new_default();
    match m {
        0 => {
            let mut p = message.init_root::<data_node::create_region_params::Builder>();
            p.set_epoch(5);
            let mut r = p.init_request();
            r.set_database("fuzzdb");
            r.set_generation(2);
            let mut region = r.reborrow().init_region();
            region.set_kind(2);
            region.set_id(40);
            let mut peers = r.init_peers(3);
            for i in 0..3 {
                peers.set(i, i);
            }
        }
        1 => {
            let mut p = message.init_root::<data_node::delete_region_params::Builder>();
            p.set_epoch(5);
            let mut region = p.init_region();
            region.set_kind(2);
            region.set_id(40);
        }
        2 => {
            let mut p = message.init_root::<data_node::write_region_params::Builder>();
            p.set_bytes(&[7u8; 64]);
            let mut region = p.init_region();
            region.set_kind(2);
            region.set_id(40);
        }
        3 => {
            let mut p = message.init_root::<data_node::submit_task_params::Builder>();
            p.set_epoch(5);
            let mut t = p.init_task();
            t.set_task_id(1 << 20 | 1);
            t.set_generation(3);
            let mut region = t.init_kind().init_delete_region_peer();
            region.set_kind(2);
            region.set_id(40);
        }
        4 => {
            let mut p = message.init_root::<data_node::task_result_params::Builder>();
            p.set_task_id(1 << 20 | 1);
            p.set_wait_ms(10);
        }
        5 => {
            let mut p = message.init_root::<data_node::ack_task_params::Builder>();
            p.set_epoch(5);
            p.set_task_id(1 << 20 | 1);
        }
        6 => message
            .init_root::<data_node::heartbeat_params::Builder>()
            .set_epoch(5),
        7 | 14 => {
            // createDatabase and startCreateDatabase share their first five fields.
            let mut p = message.init_root::<config_node::start_create_database_params::Builder>();
            p.set_name("fuzzdb");
            p.set_schema_rf(1);
            p.set_data_rf(3);
            p.set_data_region_groups(2);
            p.set_schema_region_groups(1);
            p.init_request_key().set_some("k-1");
        }
        8 => {
            let mut p = message.init_root::<config_node::delete_database_params::Builder>();
            p.set_name("fuzzdb");
            p.init_request_key().set_some("k-2");
        }
        10 => message
            .init_root::<config_node::list_region_groups_params::Builder>()
            .set_database("fuzzdb"),
        13 => message
            .init_root::<config_node::get_procedure_params::Builder>()
            .set_id(1),
        15 => {
            let mut p = message.init_root::<config_node::register_data_node_params::Builder>();
            p.set_address("127.0.0.1:17001");
            p.init_known_id().set_some(1);
        }
        16 => {
            let mut p = message.init_root::<config_node::data_node_heartbeat_params::Builder>();
            p.set_id(1);
            let mut report = p.init_report();
            let mut regions = report.reborrow().init_regions(1);
            let mut r = regions.reborrow().get(0);
            r.set_bytes(1 << 20);
            let mut region = r.init_region();
            region.set_kind(2);
            region.set_id(40);
            report.init_running_tasks(1).set(0, 9);
        }
        // listDatabases, listDataNodes, listProcedures take no parameters: an empty struct
        // (which the fuzzer fills with garbage).
        _ => {
            message.init_root::<data_node::heartbeat_params::Builder>();
        }
    }
    let segments = message.get_segments_for_output();
    let mut seed = vec![m as u8];
    seed.extend_from_slice(segments[0]);
    seed
}

/// Calls method `input[0]` with `input[1..]` as its parameter struct (one segment).
/// Returns whether a request was sent (a struct that cannot be read is not).
fn call(client: &Client, input: &[u8]) -> Result<bool, String> {
    let Some((&m, words)) = input.split_first() else {
        return Ok(false);
    };
    let m = usize::from(m) % METHODS;
    // An aligned copy of the segment (partial trailing words are dropped).
    let mut segment = capnp::Word::allocate_zeroed_vec(words.len() / 8);
    capnp::Word::words_to_bytes_mut(&mut segment).copy_from_slice(&words[..words.len() / 8 * 8]);
    let bytes = capnp::Word::words_to_bytes(&segment);
    let segments = [bytes];
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(1 << 20))
        .nesting_limit(32);
    let message =
        capnp::message::Reader::new(capnp::message::SegmentArray::new(&segments), options);
    // A parameter struct that cannot even be copied into a request is the client's own
    // decode error: nothing to send.
    macro_rules! send {
        ($client:expr, $request:ident, $m:ident :: $params:ident $(, |$p:ident| $fix:expr)?) => {{
            let Ok(root) = message.get_root::<$m::$params::Reader<'_>>() else {
                return Ok(false);
            };
            let mut request = $client.$request();
            if request.set(root).is_err() {
                return Ok(false);
            }
            $( { let mut $p = request.get(); $fix; } )?
            client.block_on(async move {
                // An error reply or a refused call is fine; only no answer is not.
                let _ = request.send().promise.await;
                Ok(true)
            })
        }};
    }
    use config_node as cn;
    use data_node as dn;
    match m {
        0 => send!(client.data, create_region_request, dn::create_region_params),
        1 => send!(client.data, delete_region_request, dn::delete_region_params),
        2 => send!(client.data, write_region_request, dn::write_region_params),
        3 => send!(client.data, submit_task_request, dn::submit_task_params),
        // A long poll may legitimately wait up to 5 minutes: keep it short here.
        4 => send!(
            client.data,
            task_result_request,
            dn::task_result_params,
            |p| {
                let wait = p.reborrow().get_wait_ms().min(50);
                p.set_wait_ms(wait)
            }
        ),
        5 => send!(client.data, ack_task_request, dn::ack_task_params),
        6 => send!(client.data, heartbeat_request, dn::heartbeat_params),
        // Group counts are clamped so a long run does not spend itself creating regions.
        7 => send!(
            client.admin,
            create_database_request,
            cn::create_database_params,
            |p| {
                let (d, s) = (
                    p.reborrow().get_data_region_groups(),
                    p.reborrow().get_schema_region_groups(),
                );
                p.set_data_region_groups(d % 9);
                p.set_schema_region_groups(s % 3)
            }
        ),
        8 => send!(
            client.admin,
            delete_database_request,
            cn::delete_database_params
        ),
        9 => send!(
            client.admin,
            list_databases_request,
            cn::list_databases_params
        ),
        10 => send!(
            client.admin,
            list_region_groups_request,
            cn::list_region_groups_params
        ),
        11 => send!(
            client.admin,
            list_data_nodes_request,
            cn::list_data_nodes_params
        ),
        12 => send!(
            client.admin,
            list_procedures_request,
            cn::list_procedures_params
        ),
        13 => send!(
            client.admin,
            get_procedure_request,
            cn::get_procedure_params
        ),
        14 => send!(
            client.admin,
            start_create_database_request,
            cn::start_create_database_params,
            |p| {
                let (d, s) = (
                    p.reborrow().get_data_region_groups(),
                    p.reborrow().get_schema_region_groups(),
                );
                p.set_data_region_groups(d % 9);
                p.set_schema_region_groups(s % 3)
            }
        ),
        15 => send!(
            client.registration,
            register_data_node_request,
            cn::register_data_node_params
        ),
        _ => send!(
            client.registration,
            data_node_heartbeat_request,
            cn::data_node_heartbeat_params
        ),
    }
}

/// Every method with corrupted parameters, through a logged-in connection.
pub fn capnp_request() -> Target {
    let seeds = (0..METHODS).map(seed_params).collect();
    let mut state: Option<Result<(Node, Client), String>> = None;
    let mut cases = 0u64;
    let sent = Arc::new(AtomicU64::new(0));
    let counted = sent.clone();
    Target {
        name: "capnp_request",
        seeds,
        counters: vec![("sent", sent)],
        run: Box::new(move |input| {
            let (_, client) = state
                .get_or_insert_with(|| {
                    let node = start_node()?;
                    let client = connect(node.server.local_addr())?;
                    Ok((node, client))
                })
                .as_ref()
                .map_err(Clone::clone)?;
            if call(client, input)? {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            cases += 1;
            if cases % 64 == 0 {
                client.health()?;
            }
            Ok(())
        }),
    }
}

/// One serialized RPC message.
fn frame(build: impl FnOnce(rpc_capnp::message::Builder<'_>)) -> Vec<u8> {
    let mut message = Builder::new_default();
    build(message.init_root());
    let mut out = Vec::new();
    let _ = capnp::serialize::write_message(&mut out, &message);
    out
}

/// A call pipelined on the login's answer (question 1): `reply.services.<field>`.
fn pipelined_call(question: u32, field: u16, interface: u64, method: u16) -> Vec<u8> {
    frame(|m| {
        let mut call = m.init_call();
        call.set_question_id(question);
        call.set_interface_id(interface);
        call.set_method_id(method);
        let mut promised = call.reborrow().init_target().init_promised_answer();
        promised.set_question_id(1);
        let mut transform = promised.init_transform(3);
        for (i, pointer) in [0u16, 0, field].into_iter().enumerate() {
            transform
                .reborrow()
                .get(i as u32)
                .set_get_pointer_field(pointer);
        }
        // `(epoch = 1)`: heartbeat's parameters; a method without parameters ignores it.
        call.init_params()
            .init_content()
            .init_as::<data_node::heartbeat_params::Builder<'_>>()
            .set_epoch(1);
    })
}

/// A real conversation: bootstrap, login as admin, pipelined calls, finishes.
fn frames_seed(role: Role, secret: &str) -> Vec<u8> {
    let mut out = frame(|m| m.init_bootstrap().set_question_id(0));
    out.extend(frame(|m| {
        let mut call = m.init_call();
        call.set_question_id(1);
        call.set_interface_id(bootstrap::Client::TYPE_ID);
        call.set_method_id(0);
        call.reborrow()
            .init_target()
            .init_promised_answer()
            .set_question_id(0);
        let mut params = call
            .init_params()
            .init_content()
            .init_as::<bootstrap::login_params::Builder<'_>>();
        params.set_secret(secret);
        params.set_role(role.code());
    }));
    // configNode.listDatabases (field 1) and dataNode.heartbeat (field 0).
    out.extend(pipelined_call(2, 1, config_node::Client::TYPE_ID, 2));
    out.extend(pipelined_call(3, 0, data_node::Client::TYPE_ID, 6));
    for question in 0..4 {
        out.extend(frame(|m| m.init_finish().set_question_id(question)));
    }
    out
}

/// Sends `input` on a fresh connection, ends the writing side, and waits for the server
/// to close.
fn send_frames(address: SocketAddr, input: &[u8]) -> Result<(), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_write_timeout(Some(CALL_LIMIT));
    // The server may close while we write: that is allowed.
    let _ = stream.write_all(input);
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(CALL_LIMIT));
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "the server kept a connection open {CALL_LIMIT:?} after its input ended"
                ));
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Raw bytes on a fresh connection.
pub fn capnp_frames() -> Target {
    let seeds = vec![
        frames_seed(Role::Admin, ADMIN),
        frames_seed(Role::ConfigNode, INTERNAL),
        frames_seed(Role::Admin, "wrong"),
    ];
    let mut state: Option<Result<(Node, Client), String>> = None;
    let mut cases = 0u64;
    Target {
        name: "capnp_frames",
        seeds,
        counters: Vec::new(),
        run: Box::new(move |input| {
            let (node, client) = state
                .get_or_insert_with(|| {
                    let node = start_node()?;
                    let client = connect(node.server.local_addr())?;
                    Ok((node, client))
                })
                .as_ref()
                .map_err(Clone::clone)?;
            send_frames(node.server.local_addr(), input)?;
            cases += 1;
            if cases % 64 == 0 {
                client.health()?;
            }
            Ok(())
        }),
    }
}
