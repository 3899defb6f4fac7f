use shoal_core::api::{ApiError, MaintainTask, MaintainTaskKind};
use shoal_core::model::{Epoch, RegionId, RegionKind, TaskId};

use super::*;
use crate::shoal_capnp::{config_node, error, maintain_task, region_id};

#[test]
fn unknown_region_kind_code_is_malformed_not_a_panic() {
    let mut message = capnp::message::Builder::new_default();
    let mut region = message.init_root::<region_id::Builder<'_>>();
    region.set_kind(9);
    region.set_id(1);
    let read = read_region_id(message.get_root_as_reader::<region_id::Reader<'_>>());
    assert!(matches!(read, Err(ApiError::Malformed(m)) if m.contains('9')));
}

#[test]
fn maintain_task_without_a_kind_is_malformed() {
    let mut message = capnp::message::Builder::new_default();
    message
        .init_root::<maintain_task::Builder<'_>>()
        .set_task_id(3);
    let read = read_maintain_task(message.get_root_as_reader::<maintain_task::Reader<'_>>());
    assert!(matches!(read, Err(ApiError::Malformed(m)) if m.contains("without a kind")));
}

#[test]
fn maintain_task_round_trips() {
    let task = MaintainTask {
        task_id: TaskId(12),
        kind: MaintainTaskKind::DeleteRegionPeer {
            region: RegionId::new(RegionKind::Schema, 4),
            generation: 0,
        },
    };
    let mut message = capnp::message::Builder::new_default();
    write_maintain_task(message.init_root::<maintain_task::Builder<'_>>(), &task);
    let read = read_maintain_task(message.get_root_as_reader::<maintain_task::Reader<'_>>());
    assert_eq!(read, Ok(task));
}

#[test]
fn copy_task_chunk_and_digest_round_trip() {
    let task = MaintainTask {
        task_id: TaskId(13),
        kind: MaintainTaskKind::CopyRegion {
            region: RegionId::new(RegionKind::Data, 5),
            source: shoal_core::model::DataNodeLocation::new(
                shoal_core::model::DataNodeId(2),
                "127.0.0.1:7000",
            )
            .expect("location"),
        },
    };
    let mut message = capnp::message::Builder::new_default();
    write_maintain_task(message.init_root::<maintain_task::Builder<'_>>(), &task);
    let read = read_maintain_task(message.get_root_as_reader::<maintain_task::Reader<'_>>());
    assert_eq!(read, Ok(task));

    let chunk = shoal_core::api::RegionChunk {
        offset: 4096,
        data: vec![1, 2, 3],
        crc32c: 0x1234_5678,
        region_len: 9000,
    };
    let mut message = capnp::message::Builder::new_default();
    write_region_chunk(
        message.init_root::<crate::shoal_capnp::region_chunk::Builder<'_>>(),
        &chunk,
    );
    let read = read_region_chunk(
        message.get_root_as_reader::<crate::shoal_capnp::region_chunk::Reader<'_>>(),
    );
    assert_eq!(read, Ok(chunk));

    let digest = shoal_core::api::RegionDigest {
        len: 10,
        crc32c: 77,
        region_len: 12,
    };
    let mut message = capnp::message::Builder::new_default();
    write_region_digest(
        message.init_root::<crate::shoal_capnp::region_digest::Builder<'_>>(),
        &digest,
    );
    let read = read_region_digest(
        message.get_root_as_reader::<crate::shoal_capnp::region_digest::Reader<'_>>(),
    );
    assert_eq!(read, Ok(digest));
}

#[test]
fn caller_side_errors_travel_as_retryable_remote_failures() {
    for (error, expected_retryable) in [
        (ApiError::Timeout(std::time::Duration::from_secs(2)), true),
        (ApiError::Unreachable("dn-1".into()), true),
        (
            ApiError::Remote {
                message: "x".into(),
                retryable: false,
            },
            false,
        ),
    ] {
        let mut message = capnp::message::Builder::new_default();
        write_error(message.init_root::<error::Builder<'_>>(), &error);
        let read = read_error(message.get_root_as_reader::<error::Reader<'_>>());
        assert!(
            matches!(read, ApiError::Remote { retryable, .. } if retryable == expected_retryable),
            "{error:?} became {read:?}"
        );
    }
    let stale = ApiError::StaleLeader {
        request: Epoch(1),
        seen: Epoch(2),
    };
    let mut message = capnp::message::Builder::new_default();
    write_error(message.init_root::<error::Builder<'_>>(), &stale);
    assert_eq!(
        read_error(message.get_root_as_reader::<error::Reader<'_>>()),
        stale
    );
}

#[test]
fn a_request_from_a_client_that_predates_request_keys_reads_as_no_key() {
    // An old client's params struct has no `requestKey` pointer at all.
    let mut message = capnp::message::Builder::new_default();
    message
        .init_root::<config_node::delete_database_params::Builder<'_>>()
        .set_name("metrics");
    let params = message
        .get_root_as_reader::<config_node::delete_database_params::Reader<'_>>()
        .expect("params");
    assert_eq!(read_opt_text(params.get_request_key()), Ok(None));
}

#[test]
fn not_leader_travels_as_its_own_variant_with_the_leader_address() {
    for error in [
        ApiError::NotLeader {
            leader: Some("10.0.0.2:7070".into()),
        },
        ApiError::NotLeader { leader: None },
    ] {
        let mut message = capnp::message::Builder::new_default();
        write_error(message.init_root::<error::Builder<'_>>(), &error);
        let read = read_error(message.get_root_as_reader::<error::Reader<'_>>());
        assert_eq!(read, error);
        assert!(
            read.is_retryable(),
            "a follower's refusal is retryable elsewhere"
        );
    }
}
