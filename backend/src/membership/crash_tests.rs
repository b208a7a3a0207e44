//! Recovery rounds stepped in memory: several members over one in-memory store and a tick
//! clock, with a member stopping before or after each of its store writes and signals, in every
//! order of turns, and liveness learned after a delay. Every survivor must reach the same
//! decision, and the view record must only ever hold a decided view.
use super::recovery::{signal, Decision, Post, Round};
use super::{View, ViewStore};
use chorus_bootstrap::{MemStore, Store};
use std::sync::Arc;

/// One member's steps in a round, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Its report (failure round) or boundary (admission round) goes into the store.
    Post,
    /// It raises the round's signal at every member (in memory: the highest value asked).
    Signal,
    /// It derives the decision it would write (store reads only) ...
    Derive,
    /// ... and writes it with compare-and-set (or takes the one written first).
    Commit,
    /// It applies the decision: publishes the decided view.
    Publish,
    Done,
}

const STEPS: [Step; 6] = [Step::Post, Step::Signal, Step::Derive, Step::Commit, Step::Publish, Step::Done];

struct Member {
    rank: usize,
    next: Step,
    /// Stops for good when it reaches this step.
    stops_at: Option<Step>,
    stopped_at_tick: Option<u64>,
    /// What it derived, then the decision it holds.
    decision: Option<Decision>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Rank `dead` died before the round; the members report it.
    Failure { dead: usize },
    /// Rank `joiner` asked to be active again; the members post the boundary they are at.
    Admission { joiner: usize },
}

/// How one simulated round goes besides the protocol: who is slow, who is wrongly suspected.
#[derive(Clone, Copy, Default)]
struct Weather {
    /// (member, step, ticks): the member waits this long before taking that step.
    slow: Option<(usize, Step, u64)>,
    /// A second such pause.
    slow2: Option<(usize, Step, u64)>,
    /// (observer, suspect): the observer takes the suspect for dead (a false suspicion).
    suspects: Option<(usize, usize)>,
}

/// Runs one round among `members` of a `n`-rank group. `order`: the members' turn order;
/// `stopper`: (member, the step it stops at); `delay`: ticks until the others see a stopped
/// member dead. Returns the members' decisions (`None` for one that stopped before deciding)
/// after checking the view record at every tick.
fn run_round(n: usize, kind: Kind, members: &[usize], order: &[usize], stopper: Option<(usize, Step)>, delay: u64) -> Vec<(usize, Option<Decision>, Option<Step>)> {
    run_round_in(n, kind, members, order, stopper, delay, Weather::default())
}

#[allow(clippy::too_many_arguments)]
fn run_round_in(n: usize, kind: Kind, members: &[usize], order: &[usize], stopper: Option<(usize, Step)>, delay: u64, weather: Weather) -> Vec<(usize, Option<Decision>, Option<Step>)> {
    let mut waited: Vec<(usize, Step, u64)> = Vec::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let views = ViewStore::new(store.clone(), "sim", n);
    let mut view = View::full(n);
    if let Kind::Admission { joiner } = kind {
        // The joiner's predecessor was removed by an earlier round; the joiner asked back in.
        view = view.next(&[], &[joiner]);
        views.publish(&view).unwrap();
        views.activate(&[joiner]).unwrap();
    }
    let mut state: Vec<Member> = members.iter().map(|&rank| Member { rank, next: Step::Post, stops_at: None, stopped_at_tick: None, decision: None }).collect();
    if let Some((who, at)) = stopper {
        state.iter_mut().find(|m| m.rank == who).expect("a member").stops_at = Some(at);
    }
    let mut raised = 0u64;
    let decided_views = |store: &Arc<dyn Store>| ViewStore::new(store.clone(), "sim", n).read().unwrap();
    for tick in 0..200u64 {
        let dead_now: Vec<usize> = state.iter().filter(|m| m.stopped_at_tick.is_some_and(|t| tick >= t + delay)).map(|m| m.rank).collect();
        for &who in order {
            let is_dead = |r: usize| matches!(kind, Kind::Failure { dead } if dead == r) || dead_now.contains(&r) || weather.suspects == Some((who, r));
            let m = state.iter_mut().find(|m| m.rank == who).expect("a member");
            if m.stopped_at_tick.is_some() || m.next == Step::Done {
                continue;
            }
            if m.stops_at == Some(m.next) {
                m.stopped_at_tick = Some(tick);
                continue;
            }
            let pause = [weather.slow, weather.slow2].into_iter().flatten().find(|&(w, at, _)| w == who && at == m.next);
            if let Some((_, at, ticks)) = pause {
                let entry = match waited.iter_mut().find(|(w, s, _)| *w == who && *s == at) {
                    Some(e) => e,
                    None => {
                        waited.push((who, at, 0));
                        waited.last_mut().expect("pushed")
                    }
                };
                if entry.2 < ticks {
                    entry.2 += 1;
                    continue;
                }
            }
            let r = Round { store: &store, views: &views, uid: "sim", me: m.rank, round: 1, view: &view };
            match m.next {
                Step::Post => match kind {
                    Kind::Failure { dead } => r.post(&Post { committed: 4, current: Some((5, m.rank % 2 == 0)), dead: vec![dead], epoch: view.epoch, can_rerun: true, timed_out: vec![], marks: vec![] }).unwrap(),
                    Kind::Admission { .. } => r.post_boundary(4, vec![]).unwrap(),
                },
                Step::Signal => raised = raised.max(signal(1, matches!(kind, Kind::Failure { .. }))),
                Step::Derive => {
                    let d = match kind {
                        Kind::Failure { .. } => r.propose_failure(is_dead).unwrap(),
                        // A member seen dead turns the admission into a failure round: the member
                        // reports (once more a store write) and decides as after a failure.
                        Kind::Admission { .. } => match r.propose_admission().unwrap() {
                            Some(d) => Some(d),
                            None if members.iter().any(|&p| is_dead(p)) => {
                                r.post(&Post { committed: 4, current: None, dead: members.iter().copied().filter(|&p| is_dead(p)).collect(), epoch: view.epoch, can_rerun: true, timed_out: vec![], marks: vec![] }).unwrap();
                                r.propose_failure(is_dead).unwrap()
                            }
                            None => None,
                        },
                    };
                    match d {
                        Some(d) => m.decision = Some(d),
                        None => continue,
                    }
                }
                Step::Commit => m.decision = Some(r.commit(m.decision.clone().expect("derived")).unwrap()),
                Step::Publish => views.publish(&m.decision.clone().expect("decided").view).unwrap(),
                Step::Done => {}
            }
            m.next = STEPS[STEPS.iter().position(|s| *s == m.next).unwrap() + 1];
            // The view record holds the view before the round, or the round's decision.
            let record = decided_views(&store);
            let decision = r.decision().unwrap();
            assert!(record == view || decision.as_ref().is_some_and(|d| d.view == record), "the view record holds {record:?}, which nobody decided (decision {decision:?})");
        }
        if state.iter().all(|m| m.stopped_at_tick.is_some() || m.next == Step::Done) {
            break;
        }
    }
    assert_eq!(super::recovery::round_of(raised), 1, "a member asked for the round");
    state.into_iter().map(|m| (m.rank, m.decision, m.stopped_at_tick.map(|_| m.next))).collect()
}

fn orders(members: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![members.to_vec()];
    out.push(members.iter().rev().copied().collect());
    let mut rotated = members.to_vec();
    rotated.rotate_left(1);
    out.push(rotated);
    out
}

/// Every survivor decided, all alike; a member that stopped after its compare-and-set holds that
/// decision too; the decided view excludes every rank that died before the round.
fn check_agreement(results: &[(usize, Option<Decision>, Option<Step>)], kind: Kind, what: &str) {
    let survivors: Vec<&Decision> = results.iter().filter(|(_, _, stopped)| stopped.is_none()).map(|(r, d, _)| d.as_ref().unwrap_or_else(|| panic!("{what}: survivor {r} never decided"))).collect();
    let Some(first) = survivors.first() else { return };
    for d in &survivors {
        assert_eq!(d, first, "{what}: survivors decided differently");
    }
    for (r, d, stopped) in results {
        if let (Some(d), Some(Step::Publish | Step::Done)) = (d, stopped) {
            assert_eq!(d, *first, "{what}: rank {r} (stopped after its compare-and-set) holds another decision");
        }
    }
    match kind {
        Kind::Failure { dead } => assert!(!first.view.is_active(dead), "{what}: the dead rank stays active"),
        Kind::Admission { joiner } => {
            if first.removed.is_empty() {
                assert!(first.view.is_active(joiner), "{what}: the joiner was not admitted");
            }
        }
    }
    assert_eq!(first.view.epoch, 1 + matches!(kind, Kind::Admission { .. }) as u64, "{what}: one round makes one epoch");
}

#[test]
fn a_failure_round_agrees_whoever_stops_wherever() {
    let n = 4;
    let kind = Kind::Failure { dead: 3 };
    let members = [0, 1, 2];
    for order in orders(&members) {
        for delay in [0, 3] {
            check_agreement(&run_round(n, kind, &members, &order, None, delay), kind, &format!("no stop, order {order:?}"));
            for &who in &members {
                for at in STEPS {
                    let what = format!("rank {who} stops at {at:?}, order {order:?}, seen dead after {delay} ticks");
                    let results = run_round(n, kind, &members, &order, Some((who, at)), delay);
                    check_agreement(&results, kind, &what);
                }
            }
        }
    }
}

/// One member wrongly takes another for dead while that one is slow to report, and pauses
/// between deriving its decision and writing it: the members derive different decisions, and
/// only one of them may hold.
#[test]
fn a_false_suspicion_and_a_slow_writer_still_agree() {
    let n = 4;
    let kind = Kind::Failure { dead: 3 };
    let members = [0, 1, 2];
    let mut diverged = 0;
    for order in orders(&members) {
        let observer = order[0];
        for &suspect in members.iter().filter(|&&m| m != observer) {
            for report_late in 0..4 {
                for write_late in 0..4 {
                    let weather = Weather { slow: Some((suspect, Step::Post, report_late)), slow2: Some((observer, Step::Commit, write_late)), suspects: Some((observer, suspect)) };
                    let what = format!("rank {observer} suspects rank {suspect} (reports {report_late} ticks late), writes {write_late} ticks late, order {order:?}");
                    let results = run_round_in(n, kind, &members, &order, None, 0, weather);
                    check_agreement(&results, kind, &what);
                    diverged += results.iter().any(|(_, d, _)| d.as_ref().is_some_and(|d| d.view.is_active(suspect))) as u32;
                }
            }
        }
    }
    // The suspicion lost some races (the suspect's report came first): both outcomes were reached.
    assert!(diverged > 0, "no run decided without the suspicion");
}

#[test]
fn an_admission_round_agrees_whoever_stops_wherever() {
    let n = 4;
    let kind = Kind::Admission { joiner: 2 };
    let members = [0, 1, 3];
    for order in orders(&members) {
        for delay in [0, 3] {
            for &who in &members {
                for at in STEPS {
                    let what = format!("rank {who} stops at {at:?}, order {order:?}, seen dead after {delay} ticks");
                    let results = run_round(n, kind, &members, &order, Some((who, at)), delay);
                    check_agreement(&results, kind, &what);
                }
            }
        }
    }
}

/// Two members derive different decisions (one already sees a third dead, the other does not):
/// only the decision's compare-and-set commits, and the loser leaves nothing in the store.
#[test]
fn a_lost_decision_leaves_nothing_behind() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let views = ViewStore::new(store.clone(), "race", 4);
    let view = View::full(4);
    let round = |me| Round { store: &store, views: &views, uid: "race", me, round: 1, view: &view };
    for me in [0, 1] {
        round(me).post(&Post { committed: 4, current: None, dead: vec![3], epoch: 0, can_rerun: true, timed_out: vec![], marks: vec![] }).unwrap();
    }
    // Rank 0 sees rank 2 dead too; rank 1 is about to decide with rank 2's (stale) post counted.
    round(2).post(&Post { committed: 4, current: None, dead: vec![], epoch: 0, can_rerun: true, timed_out: vec![], marks: vec![] }).unwrap();
    let ours = Decision { commit_through: 4, view: view.next(&[], &[2, 3]), removed: vec![2, 3], interrupted: false, rerun_possible: true, timed_out: vec![], marks: vec![] };
    let theirs = Decision { commit_through: 4, view: view.next(&[], &[3]), removed: vec![3], interrupted: false, rerun_possible: true, timed_out: vec![], marks: vec![] };
    assert_eq!(round(0).commit(ours.clone()).unwrap(), ours);
    assert_eq!(round(1).commit(theirs).unwrap(), ours, "the loser gets the winner's decision");
    assert_eq!(views.read().unwrap(), view, "nothing is published before a decision is applied");
    views.publish(&ours.view).unwrap();
    assert_eq!(views.read().unwrap(), ours.view);
}
