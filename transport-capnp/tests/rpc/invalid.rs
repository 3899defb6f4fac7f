//! Requests that decode but carry invalid values, as a client in another language could send
//! them: every one is refused (not "malformed") and reaches no API.

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use shoal_transport_capnp::shoal_capnp::{
    bootstrap, config_node, create_database_reply, data_node, delete_database_reply, error,
    list_region_groups_reply, login_reply, unit_reply,
};
use shoal_transport_capnp::{Role, WireLimits};

use super::{SECRET, start_node};

/// The refusal text of an error branch, or a description of what came instead.
fn refusal(e: capnp::Result<error::Reader<'_>>) -> Result<String, String> {
    match e.map_err(|e| e.to_string())?.which() {
        Ok(error::Refused(text)) => text
            .map_err(|e| e.to_string())?
            .to_string()
            .map_err(|e| e.to_string()),
        Ok(error::Malformed(text)) => Err(format!("malformed: {:?}", text.map(|t| t.to_string()))),
        Ok(_) => Err("another error kind".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn invalid_values_in_requests_are_refused_not_malformed() {
    let node = start_node(WireLimits::default());
    let address = node.server.local_addr();
    smol::block_on(async {
        let stream = smol::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let network = twoparty::VatNetwork::new(
            futures_lite::io::BufReader::new(stream.clone()),
            futures_lite::io::BufWriter::new(stream),
            Side::Client,
            capnp::message::ReaderOptions::new(),
        );
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let boot: bootstrap::Client = rpc.bootstrap(Side::Server);
        let session = async {
            // One login per role, on the same connection: admin for the ConfigNode's admin
            // API, ConfigNode for the DataNode API.
            let mut replies = Vec::new();
            for role in [Role::Admin, Role::ConfigNode] {
                let mut login = boot.login_request();
                login.get().set_secret(SECRET);
                login.get().set_role(role.code());
                replies.push(login.send().promise.await.expect("login"));
            }
            let services: Vec<_> = replies
                .iter()
                .map(|reply| {
                    match reply
                        .get()
                        .and_then(|r| r.get_reply())
                        .expect("reply")
                        .which()
                    {
                        Ok(login_reply::Services(s)) => s.expect("services"),
                        _ => panic!("login refused"),
                    }
                })
                .collect();
            let config: config_node::Client = services[0].get_config_node().expect("ConfigNode");
            let data: data_node::Client = services[1].get_data_node().expect("DataNode");

            for (name, schema_rf, data_rf, expected) in [
                ("9digit", 1, 1, "invalid database name \"9digit\""),
                ("ok", 0, 1, "replication factor 0 is outside 1..=7"),
                ("ok", 1, 8, "replication factor 8 is outside 1..=7"),
            ] {
                let mut req = config.start_create_database_request();
                let mut p = req.get();
                p.set_name(name);
                p.set_schema_rf(schema_rf);
                p.set_data_rf(data_rf);
                p.set_data_region_groups(1);
                p.set_schema_region_groups(1);
                let resp = req.send().promise.await.expect("answered");
                let reply = resp.get().and_then(|r| r.get_reply()).expect("reply");
                let refused = match reply.which() {
                    Ok(create_database_reply::Error(e)) => refusal(e),
                    _ => Err("accepted".into()),
                };
                let message = refused
                    .unwrap_or_else(|e| panic!("create {name} rf {schema_rf}/{data_rf}: {e}"));
                assert!(message.starts_with("invalid request: "), "{message}");
                assert!(message.contains(expected), "{message}");
            }

            let mut req = config.delete_database_request();
            req.get().set_name("no spaces allowed");
            let resp = req.send().promise.await.expect("answered");
            match resp
                .get()
                .and_then(|r| r.get_reply())
                .expect("reply")
                .which()
            {
                Ok(delete_database_reply::Error(e)) => {
                    let message = refusal(e).expect("refused");
                    assert!(message.contains("invalid database name"), "{message}");
                }
                _ => panic!("delete of an invalid name was not refused"),
            }

            let mut req = config.list_region_groups_request();
            req.get().set_database("-");
            let resp = req.send().promise.await.expect("answered");
            match resp
                .get()
                .and_then(|r| r.get_reply())
                .expect("reply")
                .which()
            {
                Ok(list_region_groups_reply::Error(e)) => {
                    refusal(e).expect("refused");
                }
                _ => panic!("a list filtered by an invalid name was not refused"),
            }

            let mut req = data.create_region_request();
            req.get().set_epoch(1);
            let mut r = req.get().init_request();
            r.set_database("");
            let mut region = r.init_region();
            region.set_kind(2);
            region.set_id(1);
            let resp = req.send().promise.await.expect("answered");
            match resp
                .get()
                .and_then(|r| r.get_reply())
                .expect("reply")
                .which()
            {
                Ok(unit_reply::Error(e)) => {
                    refusal(e).expect("refused");
                }
                _ => panic!("a region of an invalid database was not refused"),
            }
        };
        futures_lite::future::or(session, async {
            let _ = rpc.await;
            panic!("the connection ended early");
        })
        .await;
    });
    assert!(
        node.config_node.request_keys().is_empty(),
        "an invalid request reached the ConfigNode API"
    );
    assert!(
        node.data_node.calls().is_empty(),
        "an invalid request reached the DataNode API"
    );
}
