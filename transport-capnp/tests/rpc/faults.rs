//! Faults on the wire: garbage, oversized messages, servers that go away, slow calls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_core::api::{ApiError, DataNodeApi, MaintainTask, MaintainTaskKind, TaskStatus};
use shoal_core::model::{Epoch, TaskId};
use shoal_transport_capnp::{CapnpDataNodeClient, ClientOptions, RpcRuntime, WireLimits};

use super::{SECRET, data_client, data_region, options, start_node, start_node_at};

/// Sends `bytes` on a raw TCP connection and waits (bounded) for the server to close it.
fn send_raw(address: std::net::SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may close mid-write: that is the point.
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 256];
    let _ = stream.read(&mut sink);
}

#[test]
fn garbage_and_oversized_messages_do_not_take_the_server_down() {
    let limits = WireLimits {
        max_message_bytes: 1 << 20,
        ..WireLimits::default()
    };
    let node = start_node(limits);
    let address = node.server.local_addr();

    // Random-looking garbage.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    send_raw(address, &garbage);
    // A segment table announcing one 2 GiB segment: refused before any body is read.
    let mut huge = vec![0u8, 0, 0, 0];
    huge.extend_from_slice(&(1u32 << 28).to_le_bytes());
    huge.extend_from_slice(&[0xAB; 64]);
    send_raw(address, &huge);
    // A segment table announcing 100 000 segments.
    let mut many = 99_999u32.to_le_bytes().to_vec();
    many.extend_from_slice(&[1u8; 64]);
    send_raw(address, &many);

    smol::block_on(async {
        // A real client sending a message over the server's limit is told it is malformed
        // (the server aborts that connection; resending the same bytes cannot help)...
        let client = data_client(&node, options(SECRET));
        client
            .create_region(
                Epoch(1),
                shoal_core::api::CreateRegionRequest {
                    region: data_region(1),
                    database: super::db("big"),
                    peers: vec![],
                    generation: 0,
                },
            )
            .await
            .expect("create");
        let error = client
            .write_region(data_region(1), vec![7u8; 2 << 20])
            .await
            .expect_err("oversized write refused");
        assert!(
            matches!(&error, ApiError::Malformed(m) if m.contains("too large")),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        assert_eq!(
            node.data_node.region(data_region(1)).map(|r| r.1.len()),
            Some(0)
        );

        // ...and the server still serves: a fresh client, and the same one reconnecting.
        let fresh = data_client(&node, options(SECRET));
        assert_eq!(
            fresh.write_region(data_region(1), vec![1; 10]).await,
            Ok(10)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.write_region(data_region(1), vec![2; 5]).await {
                Ok(size) => {
                    assert_eq!(size, 15);
                    break;
                }
                Err(e) if Instant::now() < deadline && e.is_retryable() => {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("client did not reconnect: {e:?}"),
            }
        }
    });
}

#[test]
fn a_server_that_goes_away_is_unreachable_and_the_client_reconnects_when_it_returns() {
    let node = start_node(WireLimits::default());
    let address = node.server.local_addr();
    let client = data_client(&node, options(SECRET));
    smol::block_on(async {
        client.heartbeat(Epoch(1)).await.expect("first call");
        node.server.shutdown().await;

        let error = client.heartbeat(Epoch(1)).await.expect_err("server gone");
        assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
        // Still down: each later call is Unreachable too, from a dial made during it.
        let error = client.heartbeat(Epoch(1)).await.expect_err("server gone");
        assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");

        let back = start_node_at(&address.to_string(), WireLimits::default());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.heartbeat(Epoch(1)).await {
                Ok(_) => break,
                Err(ApiError::Unreachable(_)) if Instant::now() < deadline => {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("client did not reconnect: {e:?}"),
            }
        }
        assert_eq!(back.data_node.calls(), ["heartbeat"]);
        drop(back.runtime);
    });
}

#[test]
fn a_port_nobody_listens_on_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let runtime = RpcRuntime::start("lonely").expect("rpc thread");
    let client = CapnpDataNodeClient::new(&runtime, &format!("127.0.0.1:{port}"), options(SECRET))
        .expect("client");
    let error = smol::block_on(client.heartbeat(Epoch(1))).expect_err("nobody there");
    assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[test]
fn long_poll_answers_as_soon_as_the_task_finishes() {
    let node = start_node(WireLimits::default());
    let client = data_client(&node, options(SECRET));
    smol::block_on(async {
        let task = MaintainTask {
            task_id: TaskId(77),
            kind: MaintainTaskKind::DeleteRegionPeer {
                region: data_region(1),
                generation: 0,
            },
        };
        client.submit_task(Epoch(1), task).await.expect("submit");
        let poll = {
            let client = client.clone();
            smol::spawn(async move {
                client
                    .task_result(TaskId(77), Some(Duration::from_secs(60)))
                    .await
            })
        };
        smol::Timer::after(Duration::from_millis(50)).await;
        node.data_node.set_status(TaskId(77), TaskStatus::Success);
        // Well before the 60 s wait: the long poll returned on completion.
        let status = futures_lite::future::or(async { Some(poll.await) }, async {
            smol::Timer::after(Duration::from_secs(30)).await;
            None
        })
        .await;
        assert_eq!(status, Some(Ok(TaskStatus::Success)));
    });
}

#[test]
fn a_call_the_node_does_not_answer_in_time_is_a_timeout() {
    let node = start_node(WireLimits::default());
    let opts = ClientOptions {
        call_timeout: Duration::from_millis(300),
        ..options(SECRET)
    };
    let client = data_client(&node, opts);
    smol::block_on(async {
        // Connect first, so the timeout is about the call, not the dial.
        client.heartbeat(Epoch(1)).await.expect("warm-up");
        node.data_node.stall(Duration::from_secs(30));
        let error = client
            .task_result(TaskId(5), Some(Duration::from_millis(100)))
            .await
            .expect_err("stalled");
        assert_eq!(error, ApiError::Timeout(Duration::from_millis(400)));
        assert!(error.is_retryable());
    });
}

#[test]
fn a_connection_that_never_logs_in_is_closed_but_a_logged_in_one_stays() {
    let runtime = RpcRuntime::start("login-deadline").expect("rpc thread");
    let data_node = std::sync::Arc::new(super::fake::FakeDataNode::default());
    let server = runtime
        .serve(
            "127.0.0.1:0",
            SECRET,
            shoal_transport_capnp::ServedApis::data_node(data_node.clone()),
            shoal_transport_capnp::ServerOptions {
                login_timeout: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .expect("serve");
    let address = server.local_addr();

    let mut idle = TcpStream::connect(address).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    // EOF (Ok(0)) means the server closed it; a read timeout would be an error.
    assert_eq!(
        idle.read(&mut buf)
            .expect("server closed the idle connection"),
        0
    );

    let client =
        CapnpDataNodeClient::new(&runtime, &address.to_string(), options(SECRET)).expect("client");
    smol::block_on(async {
        let task = MaintainTask {
            task_id: TaskId(1),
            kind: MaintainTaskKind::DeleteRegionPeer {
                region: data_region(1),
                generation: 0,
            },
        };
        client.submit_task(Epoch(1), task).await.expect("logged in");
        // A long poll spanning the login deadline: closing this connection would fail it.
        assert_eq!(
            client
                .task_result(TaskId(1), Some(Duration::from_millis(600)))
                .await,
            Ok(TaskStatus::Processing)
        );
    });
    assert_eq!(data_node.calls(), ["submit_task", "task_result"]);
}

/// A listener that accepts and at once closes every connection (a node that is up but
/// cannot log anyone in), counting the connection attempts it saw.
fn counting_listener() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    // Left running: it blocks in accept until the test process exits.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, accepted)
}

#[test]
fn the_first_call_after_a_server_returns_succeeds_even_right_after_a_failed_call() {
    let node = start_node(WireLimits::default());
    let address = node.server.local_addr();
    // A long backoff window: the server is back well inside it.
    let opts = ClientOptions {
        reconnect_min: Duration::from_secs(2),
        reconnect_max: Duration::from_secs(2),
        ..options(SECRET)
    };
    let client = data_client(&node, opts);
    smol::block_on(async {
        client.heartbeat(Epoch(1)).await.expect("first call");
        node.server.shutdown().await;
        // The connection is lost, then a dial is refused: the backoff window opens.
        for _ in 0..2 {
            let error = client.heartbeat(Epoch(1)).await.expect_err("server gone");
            assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
        }

        let back = start_node_at(&address.to_string(), WireLimits::default());
        let started = Instant::now();
        client
            .heartbeat(Epoch(1))
            .await
            .expect("a call made after the server is back is not answered with an old error");
        // It waited for the backoff window at most, not for the whole call timeout.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(back.data_node.calls(), ["heartbeat"]);
    });
}

#[test]
fn a_call_during_the_backoff_window_is_answered_by_its_own_attempt() {
    let (address, accepted) = counting_listener();
    let runtime = RpcRuntime::start("fresh-errors").expect("rpc thread");
    let opts = ClientOptions {
        reconnect_min: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(1),
        ..options(SECRET)
    };
    let client = CapnpDataNodeClient::new(&runtime, &address.to_string(), opts).expect("client");
    smol::block_on(async {
        let error = client.heartbeat(Epoch(1)).await.expect_err("cannot log in");
        assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Inside the 1 s window: this call still gets a connection attempt of its own.
        let error = client.heartbeat(Epoch(1)).await.expect_err("cannot log in");
        assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the second call was answered without dialling"
        );
    });
}

#[test]
fn concurrent_calls_to_a_down_node_share_dials_paced_by_backoff() {
    let (address, accepted) = counting_listener();
    let runtime = RpcRuntime::start("coalesced").expect("rpc thread");
    let opts = ClientOptions {
        reconnect_min: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(1),
        ..options(SECRET)
    };
    let client = CapnpDataNodeClient::new(&runtime, &address.to_string(), opts).expect("client");
    smol::block_on(async {
        let calls: Vec<_> = (0..32)
            .map(|_| {
                let client = client.clone();
                smol::spawn(async move { client.heartbeat(Epoch(1)).await })
            })
            .collect();
        for call in calls {
            let error = call.await.expect_err("cannot log in");
            assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
        }
    });
    // The first dial, and one more for the calls that arrived after it started.
    let dials = accepted.load(Ordering::SeqCst);
    assert!((1..=2).contains(&dials), "32 calls made {dials} dials");
}

/// A task call the client gave up on (timed out, then its connection closed) still runs to
/// its end on the node: a submission is never left half-done by a caller that went away.
#[test]
fn a_task_submission_whose_client_went_away_still_completes_on_the_node() {
    let node = start_node(WireLimits::default());
    let impatient = ClientOptions {
        call_timeout: Duration::from_millis(200),
        ..options(SECRET)
    };
    let task = MaintainTask {
        task_id: TaskId(77),
        kind: MaintainTaskKind::DeleteRegionPeer {
            region: data_region(7),
            generation: 1,
        },
    };
    smol::block_on(async {
        let client = data_client(&node, impatient);
        client.heartbeat(Epoch(1)).await.expect("warm-up");
        node.data_node.stall(Duration::from_millis(800));
        let error = client
            .submit_task(Epoch(1), task)
            .await
            .expect_err("the node answers too late");
        assert!(matches!(error, ApiError::Timeout(_)), "{error:?}");
        drop(client);
        node.data_node.stall(Duration::ZERO);
        smol::Timer::after(Duration::from_millis(1500)).await;
        let fresh = data_client(&node, options(SECRET));
        let status = fresh.task_result(TaskId(77), None).await.expect("status");
        assert_eq!(status, TaskStatus::Processing, "the submission completed");
    });
}
