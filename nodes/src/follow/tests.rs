use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

/// A fake ConfigNode: answers with what the group's `leader` says, and counts its calls.
struct Fake {
    address: String,
    group: Arc<FakeGroup>,
}

#[derive(Default)]
struct FakeGroup {
    /// The leader's address; `None` during an election.
    leader: Mutex<Option<String>>,
    /// Nodes that are down.
    down: Mutex<Vec<String>>,
    /// Nodes that refuse everything.
    refusing: Mutex<Vec<String>>,
    calls: Mutex<BTreeMap<String, u32>>,
}

impl Fake {
    fn answer(&self) -> Result<String, ApiError> {
        let g = &self.group;
        *g.calls
            .lock()
            .expect("calls")
            .entry(self.address.clone())
            .or_default() += 1;
        if g.down.lock().expect("down").contains(&self.address) {
            return Err(ApiError::Unreachable(format!("{}: refused", self.address)));
        }
        if g.refusing.lock().expect("refusing").contains(&self.address) {
            return Err(ApiError::Refused("no".into()));
        }
        let leader = g.leader.lock().expect("leader").clone();
        match leader {
            Some(l) if l == self.address => Ok(self.address.clone()),
            leader => Err(ApiError::NotLeader { leader }),
        }
    }
}

fn group(addresses: &[&str], leader: Option<&str>) -> (Following<Fake>, Arc<FakeGroup>) {
    let shared = Arc::new(FakeGroup::default());
    *shared.leader.lock().expect("leader") = leader.map(str::to_string);
    let dial_group = shared.clone();
    let following = Following::new(
        &addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        move |address: &str| {
            Some(Arc::new(Fake {
                address: address.to_string(),
                group: dial_group.clone(),
            }))
        },
    );
    (following, shared)
}

async fn ask(following: &Following<Fake>) -> Result<String, ApiError> {
    following.call(|c| async move { c.answer() }).await
}

fn calls(group: &FakeGroup, address: &str) -> u32 {
    group
        .calls
        .lock()
        .expect("calls")
        .get(address)
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_follower_hint_moves_the_call_to_the_leader_and_later_calls_go_straight_there() {
    futures_lite::future::block_on(async {
        let (following, group) = group(&["a:1", "b:1", "c:1"], Some("c:1"));
        assert_eq!(ask(&following).await, Ok("c:1".into()));
        assert_eq!(calls(&group, "a:1"), 1, "asked a first, once");
        assert_eq!(calls(&group, "b:1"), 0, "the hint skipped b");
        assert_eq!(ask(&following).await, Ok("c:1".into()));
        assert_eq!(
            calls(&group, "a:1"),
            1,
            "the second call went straight to c"
        );
        assert_eq!(following.current_address().as_deref(), Some("c:1"));
    });
}

#[test]
fn a_leader_that_was_not_given_is_learned_from_the_hint() {
    futures_lite::future::block_on(async {
        let (following, _) = group(&["a:1"], Some("d:1"));
        assert_eq!(ask(&following).await, Ok("d:1".into()));
        assert_eq!(following.addresses(), vec!["a:1", "d:1"]);
    });
}

#[test]
fn a_dead_leader_moves_calls_to_the_next_address_and_a_new_leader_is_found() {
    futures_lite::future::block_on(async {
        let (following, group) = group(&["a:1", "b:1", "c:1"], Some("a:1"));
        assert_eq!(ask(&following).await, Ok("a:1".into()));
        // a dies; b is elected.
        group.down.lock().expect("down").push("a:1".into());
        *group.leader.lock().expect("leader") = Some("b:1".into());
        assert_eq!(ask(&following).await, Ok("b:1".into()));
    });
}

#[test]
fn without_any_leader_a_call_tries_each_address_once_and_fails_retryably() {
    futures_lite::future::block_on(async {
        let (following, group) = group(&["a:1", "b:1", "c:1"], None);
        group.down.lock().expect("down").push("b:1".into());
        let error = ask(&following).await.expect_err("no leader");
        assert!(error.is_retryable(), "{error:?}");
        assert_eq!(
            error,
            ApiError::NotLeader { leader: None },
            "'no leader known' is reported over a node being down"
        );
        for address in ["a:1", "b:1", "c:1"] {
            assert_eq!(calls(&group, address), 1, "{address} asked once");
        }
    });
}

#[test]
fn a_refusal_is_final_and_not_sent_elsewhere() {
    futures_lite::future::block_on(async {
        let (following, group) = group(&["a:1", "b:1"], Some("b:1"));
        group.refusing.lock().expect("refusing").push("a:1".into());
        assert_eq!(ask(&following).await, Err(ApiError::Refused("no".into())));
        assert_eq!(calls(&group, "b:1"), 0);
    });
}

#[test]
fn address_lists_are_trimmed_deduplicated_and_never_empty() {
    assert_eq!(
        parse_addresses(" a:1, b:2,,a:1 ").expect("parse"),
        vec!["a:1", "b:2"]
    );
    assert!(parse_addresses(" , ").is_err());
}
