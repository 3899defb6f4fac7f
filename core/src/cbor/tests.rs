use proptest::prelude::*;

use super::*;
use crate::plan::{ConfigPlan, PLAN_HEADER_LEN, PlanCode};
use crate::snapshot::Snapshot;
use crate::state::ClusterState;
use crate::test_support::{any_plan, plan_history};

fn code_and_body(plan: &ConfigPlan) -> (PlanCode, Vec<u8>) {
    let bytes = plan.encode().unwrap();
    (plan.code(), bytes[PLAN_HEADER_LEN..].to_vec())
}

/// A state built by applying `plans` (every shape apply can produce, including rejections).
fn state_after(plans: &[ConfigPlan]) -> ClusterState {
    let mut state = ClusterState::default();
    for plan in plans {
        let _ = state.apply(plan);
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every body current code writes takes the fast path (else recovery silently slows
    /// down), and decodes to what ciborium decodes.
    #[test]
    fn fast_decoding_agrees_with_ciborium(plan in any_plan()) {
        let (code, body) = code_and_body(&plan);
        let reference = ConfigPlan::decode_body_ciborium(code, &body).unwrap();
        prop_assert_eq!(&reference, &plan);
        prop_assert_eq!(ConfigPlan::decode_body_fast(code, &body), Some(plan.clone()));
        prop_assert_eq!(ConfigPlan::decode(&plan.encode().unwrap()).unwrap(), plan);
    }

    /// Damaged bodies: whatever the fast path accepts, ciborium accepts as the same value;
    /// and the combined decoder answers exactly as ciborium does, errors included.
    #[test]
    fn fast_decoding_never_accepts_what_ciborium_refuses(
        plan in any_plan(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let (code, mut body) = code_and_body(&plan);
        for (at, byte, kind) in edits {
            if body.is_empty() {
                break;
            }
            let i = at.index(body.len());
            match kind {
                0 => body[i] = byte,
                1 => body.truncate(i),
                _ => body.insert(i, byte),
            }
        }
        let reference = ConfigPlan::decode_body_ciborium(code, &body);
        let combined = ConfigPlan::decode_body(code, &body);
        prop_assert_eq!(&combined, &reference);
        if let Some(fast) = ConfigPlan::decode_body_fast(code, &body) {
            prop_assert_eq!(Ok(fast), reference);
        }
    }

    /// Snapshots of states built by random histories decode alike through both paths.
    #[test]
    fn fast_snapshot_decoding_agrees_with_ciborium(plans in plan_history(40)) {
        let snapshot = Snapshot { last_index: 7, last_term: 2, state: state_after(&plans) };
        let mut body = Vec::new();
        ciborium::into_writer(&snapshot, &mut body).unwrap();
        let fast: Snapshot = decode_fast(&body).expect("fast path");
        let reference: Snapshot = decode_ciborium(&body).unwrap();
        prop_assert_eq!(&fast, &reference);
        prop_assert_eq!(fast, snapshot);
    }
}

#[test]
fn shapes_outside_the_fast_path_are_decoded_by_ciborium() {
    // A tag before a value: ciborium skips it, the fast path leaves it to ciborium.
    let tagged = [0xc6, 0x05];
    assert!(decode_fast::<u64>(&tagged).is_err());
    assert_eq!(decode_exact::<u64>(&tagged), Ok(5));
    // An indefinite-length array.
    let indefinite = [0x9f, 0x01, 0x02, 0xff];
    assert!(decode_fast::<Vec<u64>>(&indefinite).is_err());
    assert_eq!(decode_exact::<Vec<u64>>(&indefinite), Ok(vec![1, 2]));
    // A float.
    let mut float = Vec::new();
    ciborium::into_writer(&1.5f64, &mut float).unwrap();
    assert_eq!(decode_exact::<f64>(&float), Ok(1.5));
}

#[test]
fn errors_are_ciboriums() {
    let mut body = Vec::new();
    ciborium::into_writer(&"text", &mut body).unwrap();
    assert_eq!(decode_exact::<u64>(&body), decode_ciborium::<u64>(&body));
    body.push(0);
    assert_eq!(
        decode_exact::<String>(&body),
        Err(CborError::TrailingBytes(1))
    );
}
