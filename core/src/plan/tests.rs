use proptest::prelude::*;

use super::*;
use crate::test_support::{any_plan, plan_for};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_plan_round_trips(plan in any_plan()) {
        let bytes = plan.encode().unwrap();
        prop_assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), plan.code() as u16);
        prop_assert_eq!(ConfigPlan::decode(&bytes).unwrap(), plan);
    }

    #[test]
    fn every_truncation_is_a_typed_error(plan in any_plan()) {
        let bytes = plan.encode().unwrap();
        for len in 0..bytes.len() {
            let err = ConfigPlan::decode(&bytes[..len]).unwrap_err();
            if len < PLAN_HEADER_LEN {
                prop_assert_eq!(err, PlanDecodeError::Truncated { len });
            } else {
                prop_assert!(matches!(err, PlanDecodeError::Checksum { .. }), "{err:?}");
            }
        }
    }

    #[test]
    fn every_bit_flip_is_a_typed_error(plan in any_plan()) {
        let bytes = plan.encode().unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let err = ConfigPlan::decode(&damaged).unwrap_err();
            prop_assert!(matches!(err, PlanDecodeError::Checksum { .. }), "bit {bit}: {err:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = ConfigPlan::decode(&bytes);
    }

    #[test]
    fn wrong_body_under_valid_checksum_is_malformed(code in prop::sample::select(PlanCode::ALL)) {
        // A body that is valid CBOR but not the code's body type.
        let mut body = Vec::new();
        ciborium::into_writer(&"not a plan body", &mut body).unwrap();
        let err = ConfigPlan::decode(&ConfigPlan::encode_raw(code as u16, &body)).unwrap_err();
        let is_malformed = matches!(err, PlanDecodeError::MalformedBody { code: c, .. } if c == code as u16);
        prop_assert!(is_malformed, "{err:?}");
    }
}

#[test]
fn unknown_plan_code_is_named_in_the_error() {
    let err = ConfigPlan::decode(&ConfigPlan::encode_raw(9_999, &[0xa0])).unwrap_err();
    assert_eq!(err, PlanDecodeError::UnknownCode(9_999));
    assert_eq!(err.to_string(), "unknown plan code 9999");
}

#[test]
fn trailing_bytes_after_body_are_malformed() {
    let plan = ConfigPlan::PollRegionMaintainTask(PollRegionMaintainTask {});
    let mut body = plan.encode().unwrap()[PLAN_HEADER_LEN..].to_vec();
    body.push(0);
    let err = ConfigPlan::decode(&ConfigPlan::encode_raw(311, &body)).unwrap_err();
    assert!(
        matches!(err, PlanDecodeError::MalformedBody { code: 311, .. }),
        "{err:?}"
    );
}

#[test]
fn codes_are_unique_and_grouped_in_blocks() {
    let mut seen = std::collections::BTreeSet::new();
    for code in PlanCode::ALL {
        let value = *code as u16;
        assert!(seen.insert(value), "duplicate code {value}");
        assert_eq!(PlanCode::from_u16(value), Some(*code));
        assert!(
            (100..500).contains(&value),
            "code {value} outside the blocks"
        );
    }
}

/// Codes are a released contract: this table must only ever grow.
#[test]
fn released_codes_never_change_meaning() {
    let released: &[(u16, PlanCode)] = &[
        (100, PlanCode::RegisterDataNode),
        (101, PlanCode::UpdateDataNodeStatus),
        (102, PlanCode::UnregisterDataNode),
        (200, PlanCode::CreateDatabase),
        (201, PlanCode::SetDatabaseDeleting),
        (202, PlanCode::DeleteDatabase),
        (300, PlanCode::CreateRegionGroups),
        (301, PlanCode::RemoveRegionGroup),
        (302, PlanCode::AddRegionLocation),
        (303, PlanCode::RetiredRegionLeaderHint),
        (304, PlanCode::RemoveRegionLocation),
        (305, PlanCode::ReserveRegionIds),
        (306, PlanCode::RecordReplicaFootprints),
        (307, PlanCode::ReplicaDeleted),
        (308, PlanCode::DropRegionGroup),
        (309, PlanCode::AbandonReplica),
        (310, PlanCode::OfferRegionMaintainTasks),
        (311, PlanCode::PollRegionMaintainTask),
        (312, PlanCode::DropQueuedCreates),
        (313, PlanCode::ResolveLegacyDeletion),
        (400, PlanCode::SubmitProcedure),
        (401, PlanCode::UpdateProcedure),
        (402, PlanCode::DeleteProcedures),
        (403, PlanCode::TransitionWithEffect),
    ];
    for (value, code) in released {
        assert_eq!(PlanCode::from_u16(*value), Some(*code));
    }
    assert_eq!(
        released.len(),
        PlanCode::ALL.len(),
        "a new code needs a row here"
    );
}

#[test]
fn every_code_has_a_generator() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for code in PlanCode::ALL {
        let plan = plan_for(*code).new_tree(&mut runner).unwrap().current();
        assert_eq!(plan.code(), *code);
    }
}

#[test]
fn retired_code_decodes_from_old_bytes() {
    // Bytes as an old release wrote them: code 303 with a CBOR body.
    let old = ConfigPlan::RetiredRegionLeaderHint(RetiredRegionLeaderHint {
        region: RegionId::new(RegionKind::Data, 4),
        leader: DataNodeId(2),
    });
    let bytes = old.encode().unwrap();
    let decoded = ConfigPlan::decode(&bytes).unwrap();
    assert!(decoded.is_retired());
    assert_eq!(decoded, old);
}
