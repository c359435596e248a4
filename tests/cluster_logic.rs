//! The cluster member and decider against real etcd: three members run in
//! one process, each with its own view of the backends that the test sets
//! (the test plays the health checks) and a follower that applies every
//! agreed state and acknowledges it, as the engine will.

mod common;
use common::etcd as etcd_harness;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_harness::Etcd;
use failoverd::cluster::etcd::Client;
use failoverd::cluster::{
    self, Agreed, Cluster, ClusterHandle, LocalView, ServiceSpec, SwitchEvent,
};
use failoverd::config::{ClusterConfig, Failback, OnLost};
use failoverd::policy::SwitchReason;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TTL: Duration = Duration::from_secs(2);
const PREFIX: &str = "/failoverd-test";
const SERVICE: &str = "db";
const PRIMARY: &str = "primary";
const BACKUP: &str = "backup";

/// Slack for a busy test machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// How late etcd may expire a lease (its lessor looks every 500 ms, and
/// the revoke goes through raft and the disk of a busy machine).
const EXPIRY_SLACK: Duration = Duration::from_secs(3);

/// How soon the members must act on an expired lease.
const REACTION: Duration = Duration::from_secs(1);

async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    init_logging();
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

/// Log to the test's output when RUST_LOG is set.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn spec(failback_delay: Duration) -> ServiceSpec {
    ServiceSpec {
        name: SERVICE.into(),
        backends: vec![PRIMARY.into(), BACKUP.into()],
        failback: Failback::Auto,
        failback_delay,
    }
}

fn view(primary: bool, backup: bool) -> LocalView {
    LocalView {
        services: BTreeMap::from([(SERVICE.to_string(), vec![primary.into(), backup.into()])]),
    }
}

/// One agreed state a member's follower saw, and when.
#[derive(Debug, Clone)]
struct Observed {
    at: Instant,
    agreed: Option<Agreed>,
}

/// One failoverd instance, as far as the cluster goes.
struct Node {
    name: String,
    cluster: Option<Cluster>,
    handle: ClusterHandle,
    view: watch::Sender<LocalView>,
    seen: Arc<Mutex<Vec<Observed>>>,
    acks: Arc<Mutex<Vec<(Instant, u64)>>>,
    withhold: Arc<AtomicBool>,
    switches: Arc<Mutex<Vec<SwitchEvent>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    fn start(endpoints: &[String], name: &str, spec: ServiceSpec) -> Node {
        let config = ClusterConfig {
            etcd: endpoints.to_vec(),
            name: name.into(),
            prefix: PREFIX.into(),
            ttl: TTL,
            on_lost: OnLost::Close,
        };
        let (view, local) = watch::channel(view(true, true));
        let (cluster, mut switch_rx) = cluster::start(&config, vec![spec], local).unwrap();
        let handle = cluster.handle();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let withhold = Arc::new(AtomicBool::new(false));
        let switches = Arc::new(Mutex::new(Vec::new()));
        let follower = {
            let (handle, seen, acks, withhold) =
                (handle.clone(), seen.clone(), acks.clone(), withhold.clone());
            let mut rx = handle.agreed(SERVICE).unwrap();
            tokio::spawn(async move {
                loop {
                    let agreed = rx.borrow_and_update().clone();
                    let at = Instant::now();
                    seen.lock().unwrap().push(Observed {
                        at,
                        agreed: agreed.clone(),
                    });
                    if let Some(a) = agreed
                        && !withhold.load(Ordering::SeqCst)
                    {
                        acks.lock().unwrap().push((Instant::now(), a.generation));
                        handle.applied(SERVICE, a.generation);
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        let collector = {
            let switches = switches.clone();
            tokio::spawn(async move {
                while let Some(event) = switch_rx.recv().await {
                    switches.lock().unwrap().push(event);
                }
            })
        };
        Node {
            name: name.into(),
            cluster: Some(cluster),
            handle,
            view,
            seen,
            acks,
            withhold,
            switches,
            tasks: vec![follower, collector],
        }
    }

    fn set(&self, primary: bool, backup: bool) {
        self.view.send_replace(view(primary, backup));
    }

    fn agreed(&self) -> Option<Agreed> {
        self.handle.agreed(SERVICE).unwrap().borrow().clone()
    }

    fn connected(&self) -> bool {
        *self.handle.connected().borrow()
    }

    fn is_decider(&self) -> bool {
        *self.handle.is_decider().borrow()
    }

    fn alive(&self) -> bool {
        self.cluster.is_some()
    }

    /// Gone like a crash: no revoke, the lease expires after ttl.
    fn crash(&mut self) {
        self.cluster.take();
    }

    fn history(&self) -> Vec<Observed> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Nodes(Vec<Node>);

impl Nodes {
    fn start(etcd: &Etcd, spec: ServiceSpec) -> Nodes {
        Nodes::start_at(&etcd.endpoints(), spec)
    }

    fn start_at(endpoints: &[String], spec: ServiceSpec) -> Nodes {
        Nodes(
            ["px1", "px2", "px3"]
                .iter()
                .map(|name| Node::start(endpoints, name, spec.clone()))
                .collect(),
        )
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.0.iter().filter(|n| n.alive())
    }

    /// The state every live member follows, if they all follow the same.
    fn agreed(&self) -> Option<Agreed> {
        let mut states = self.live().map(Node::agreed);
        let first = states.next()??;
        states.all(|s| s.as_ref() == Some(&first)).then_some(first)
    }

    /// Every live member follows `active` at one generation: that one.
    fn agreed_on(&self, active: &str) -> Option<u64> {
        self.agreed()
            .filter(|a| a.active.as_deref() == Some(active))
            .map(|a| a.generation)
    }

    fn deciders(&self) -> Vec<String> {
        self.live()
            .filter(|n| n.is_decider())
            .map(|n| n.name.clone())
            .collect()
    }

    /// Settled: every live member connected, sees all live members and one
    /// decider, and exactly one of them is it.
    fn settled(&self) -> bool {
        let mut live: Vec<String> = self.live().map(|n| n.name.clone()).collect();
        live.sort();
        let deciders = self.deciders();
        deciders.len() == 1
            && self.live().all(|n| {
                let s = n.handle.status();
                n.connected() && s.members == live && s.decider.as_ref() == Some(&deciders[0])
            })
    }

    fn set_all(&self, primary: bool, backup: bool) {
        for n in self.live() {
            n.set(primary, backup);
        }
    }

    fn switches(&self) -> Vec<SwitchEvent> {
        self.0
            .iter()
            .flat_map(|n| n.switches.lock().unwrap().clone())
            .collect()
    }

    /// The switches the deciders reported, once there are `count` of them:
    /// a follower may see the agreed state before the decider has handed
    /// its report over (the report follows the confirmed write).
    async fn reported(&self, count: usize) -> Vec<SwitchEvent> {
        eventually(
            &format!("{count} switch report(s)"),
            Duration::from_secs(5),
            || self.switches().len() >= count,
        )
        .await;
        self.switches()
    }

    fn index_of_decider(&self) -> usize {
        self.0
            .iter()
            .position(|n| n.alive() && n.is_decider())
            .expect("a decider")
    }

    /// After member `crashed` died without revoking its lease: how long
    /// until every live member saw it gone (its lease expired in etcd), and
    /// how long after that `cond` took to hold.
    async fn after_expiry(
        &self,
        crashed: &str,
        what: &str,
        cond: impl FnMut() -> bool,
    ) -> (Duration, Duration) {
        let gone = eventually(
            &format!("{crashed}'s lease expires"),
            TTL + EXPIRY_SLACK,
            || {
                self.live()
                    .all(|n| !n.handle.status().members.iter().any(|m| m == crashed))
            },
        )
        .await;
        assert!(
            gone >= TTL / 2,
            "{crashed} gone after {gone:?}: revoked, not expired"
        );
        let then = eventually(what, REACTION, cond).await;
        (gone, then)
    }

    /// Started and agreed on the primary, settled: its generation.
    async fn ready(&self) -> u64 {
        eventually(
            "members agree on the primary with one decider",
            Duration::from_secs(15),
            || self.settled() && self.agreed_on(PRIMARY).is_some(),
        )
        .await;
        self.agreed_on(PRIMARY).unwrap()
    }
}

/// Polls `cond` every 5 ms until it holds; returns how long that took.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `cond` holds all the time for `period`.
async fn always(what: &str, period: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < period {
        assert!(cond(), "{what} (after {:?})", start.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_agree_on_the_primary_and_elect_one_decider() {
    within(60, async {
        let etcd = Etcd::start().await;
        let mut nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let took = eventually("agreement", Duration::from_secs(15), || {
            nodes.settled() && nodes.agreed_on(PRIMARY).is_some()
        })
        .await;
        let generation = nodes.agreed_on(PRIMARY).unwrap();
        println!(
            "three members agreed on the primary (generation {generation}) {} ms after start",
            ms(took)
        );
        assert_eq!(nodes.deciders().len(), 1);
        assert!(
            nodes.switches().is_empty(),
            "the first choice is not a switch"
        );
        let status = serde_json::to_value(nodes.0[0].handle.status()).unwrap();
        assert_eq!(status["name"], "px1");
        assert_eq!(status["connected"], true);
        assert_eq!(status["members"], serde_json::json!(["px1", "px2", "px3"]));
        assert_eq!(status["decider"], serde_json::json!(nodes.deciders()[0]));

        // A member that stops revokes its lease: the others see it leave at once.
        let leaving = (nodes.index_of_decider() + 1) % 3;
        let cluster = nodes.0[leaving].cluster.take().unwrap();
        let start = Instant::now();
        cluster.stop().await;
        let gone = eventually("the stopped member is gone", TTL, || nodes.settled()).await;
        println!(
            "a stopped member left the others' view after {} ms",
            ms(start.elapsed().max(gone))
        );
        assert!(
            start.elapsed() < TTL / 2,
            "leaving took {:?}: not revoked?",
            start.elapsed()
        );
        assert_eq!(nodes.agreed_on(PRIMARY), Some(generation));
        assert!(nodes.switches().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_down_everywhere_switches_once_in_two_steps() {
    within(60, async {
        let etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        nodes.set_all(false, true);
        eventually("all on the backup", Duration::from_secs(10), || {
            nodes.agreed_on(BACKUP).is_some()
        })
        .await;
        let g2 = nodes.agreed_on(BACKUP).unwrap();
        assert_eq!(g2, g0 + 2, "two steps, two generations");
        let g1 = g0 + 1;
        // Every member saw "no backend" at g1, between the primary and the backup.
        let mut backup_first_seen = None::<Instant>;
        for node in &nodes.0 {
            let states: Vec<(u64, Option<String>)> = node
                .history()
                .into_iter()
                .filter_map(|s| s.agreed.map(|a| (a.generation, a.active)))
                .collect();
            let tail = &states[states.len() - 3..];
            assert_eq!(
                tail,
                [
                    (g0, Some(PRIMARY.into())),
                    (g1, None),
                    (g2, Some(BACKUP.into()))
                ],
                "{}: {states:?}",
                node.name
            );
            let at = node
                .history()
                .iter()
                .find(|s| s.agreed.as_ref().is_some_and(|a| a.generation == g2))
                .unwrap()
                .at;
            backup_first_seen = Some(backup_first_seen.map_or(at, |b| b.min(at)));
        }
        // The backup was published only after every member had acknowledged g1.
        let last_ack = nodes
            .0
            .iter()
            .map(|n| {
                n.acks
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, g)| *g == g1)
                    .expect("acked g1")
                    .0
            })
            .max()
            .unwrap();
        assert!(
            backup_first_seen.unwrap() > last_ack,
            "step 2 before the last acknowledgement"
        );
        always("no further change", Duration::from_millis(500), || {
            nodes.agreed_on(BACKUP) == Some(g2)
        })
        .await;
        let switches = nodes.reported(1).await;
        assert_eq!(
            switches,
            vec![SwitchEvent {
                service: SERVICE.into(),
                from: Some(PRIMARY.into()),
                to: Some(BACKUP.into()),
                reason: SwitchReason::HealthCheck,
                generation: g2,
            }],
            "exactly one switch event, from the decider"
        );
        let decider = nodes.index_of_decider();
        assert_eq!(nodes.0[decider].switches.lock().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_withholds_its_ack_delays_the_second_step_until_its_lease_expires() {
    within(60, async {
        let etcd = Etcd::start().await;
        let mut nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        let stuck = (nodes.index_of_decider() + 1) % 3;
        nodes.0[stuck].withhold.store(true, Ordering::SeqCst);
        nodes.set_all(false, true);
        eventually("the first step everywhere", Duration::from_secs(10), || {
            nodes.agreed() == Some(Agreed { generation: g0 + 1, active: None })
        })
        .await;
        // Its lease lives: the decider waits, however long.
        always("no backend while a live member has not acknowledged", 2 * TTL, || {
            nodes.agreed() == Some(Agreed { generation: g0 + 1, active: None })
        })
        .await;
        let stuck_name = nodes.0[stuck].name.clone();
        nodes.0[stuck].crash();
        let (gone, then) = nodes
            .after_expiry(&stuck_name, "the backup once the stuck member's lease expired", || {
                nodes.agreed_on(BACKUP).is_some()
            })
            .await;
        println!(
            "withheld acknowledgement: the stuck member's lease expired {} ms after it died (ttl {} ms), \
             the backup was agreed {} ms after that",
            ms(gone),
            ms(TTL),
            ms(then)
        );
        assert_eq!(nodes.agreed_on(BACKUP), Some(g0 + 2));
        let reported = nodes.reported(1).await;
        assert_eq!(reported.len(), 1, "{reported:?}");
    })
    .await;
}

/// Member `name`'s record as stored in etcd.
async fn record(etcd: &Etcd, name: &str) -> serde_json::Value {
    let client = Client::new(&etcd.endpoints(), Duration::from_secs(1)).unwrap();
    let key = format!("{PREFIX}/members/{name}");
    let (kv, _) = client.get(key.as_bytes()).await.unwrap();
    serde_json::from_slice(&kv.expect("member record").value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_alone_cannot_move_the_cluster_but_two_of_three_can() {
    within(60, async {
        let etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        nodes.0[0].set(false, true);
        let start = Instant::now();
        while record(&etcd, "px1").await["services"][SERVICE]["backends"][PRIMARY] != false {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "px1's view never reached etcd"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        always(
            "one member seeing the primary down moves nobody",
            Duration::from_secs(1),
            || nodes.agreed_on(PRIMARY) == Some(g0),
        )
        .await;
        assert!(nodes.switches().is_empty());
        nodes.0[1].set(false, true);
        eventually(
            "two of three move everybody",
            Duration::from_secs(10),
            || nodes.agreed_on(BACKUP).is_some(),
        )
        .await;
        assert_eq!(nodes.reported(1).await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_that_leaves_is_replaced_within_ttl_without_a_switch() {
    within(60, async {
        let etcd = Etcd::start().await;
        let mut nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        let old = nodes.index_of_decider();
        let old_name = nodes.0[old].name.clone();
        nodes.0[old].crash();
        let (gone, then) = nodes
            .after_expiry(&old_name, "a new decider", || {
                nodes.settled() && nodes.deciders() != [old_name.clone()]
            })
            .await;
        println!(
            "decider {old_name} crashed: its lease expired after {} ms (ttl {} ms), {} took over {} ms later",
            ms(gone),
            ms(TTL),
            nodes.deciders()[0],
            ms(then)
        );
        always("taking over changes nothing", TTL, || {
            nodes.agreed_on(PRIMARY) == Some(g0)
        })
        .await;
        assert!(nodes.switches().is_empty(), "{:?}", nodes.switches());
        // The new decider decides: the primary down everywhere still moves the cluster.
        nodes.set_all(false, true);
        eventually("the new decider switches", Duration::from_secs(10), || {
            nodes.agreed_on(BACKUP).is_some()
        })
        .await;
        assert_eq!(nodes.reported(1).await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_moves_the_whole_cluster_and_enable_fails_back() {
    within(60, async {
        let etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        nodes.ready().await;
        let err = nodes.0[0]
            .handle
            .set_maintenance("nope", PRIMARY, true)
            .await
            .unwrap_err();
        assert_eq!(err, "unknown service \"nope\"");
        let err = nodes.0[0]
            .handle
            .set_maintenance(SERVICE, "nope", true)
            .await
            .unwrap_err();
        assert_eq!(err, "service \"db\": unknown backend \"nope\"");

        nodes.0[1]
            .handle
            .set_maintenance(SERVICE, PRIMARY, true)
            .await
            .unwrap();
        eventually("all on the backup", Duration::from_secs(10), || {
            nodes.agreed_on(BACKUP).is_some()
                && nodes
                    .live()
                    .all(|n| n.handle.disabled(SERVICE).contains(PRIMARY))
        })
        .await;
        nodes.0[2]
            .handle
            .set_maintenance(SERVICE, PRIMARY, false)
            .await
            .unwrap();
        eventually("all back on the primary", Duration::from_secs(10), || {
            nodes.agreed_on(PRIMARY).is_some()
        })
        .await;
        let reasons: Vec<_> = nodes
            .reported(2)
            .await
            .iter()
            .map(|e| (e.to.clone().unwrap(), e.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                (BACKUP.to_string(), SwitchReason::Disabled),
                (PRIMARY.to_string(), SwitchReason::Failback)
            ]
        );
        assert!(nodes.live().all(|n| n.handle.disabled(SERVICE).is_empty()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_waits_for_failback_delay_on_the_combined_view() {
    within(60, async {
        const DELAY: Duration = Duration::from_secs(2);
        let etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(DELAY));
        nodes.ready().await;
        nodes.set_all(false, true);
        eventually("all on the backup", Duration::from_secs(10), || {
            nodes.agreed_on(BACKUP).is_some()
        })
        .await;
        // Up for one member of three: still down for the cluster.
        nodes.0[0].set(true, true);
        always("one member seeing the primary up is no failback", DELAY + Duration::from_secs(1), || {
            nodes.agreed_on(BACKUP).is_some()
        })
        .await;
        nodes.0[1].set(true, true);
        let took = eventually("failback after the delay", DELAY + MARGIN, || {
            nodes.agreed_on(PRIMARY).is_some()
        })
        .await;
        println!("failback {} ms after the primary was up for two of three members (failback_delay {} ms)", ms(took), ms(DELAY));
        assert!(took >= DELAY, "failback after {took:?}, before failback_delay");
        let reasons: Vec<_> = nodes.reported(2).await.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [SwitchReason::HealthCheck, SwitchReason::Failback]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_disconnects_every_member_within_ttl_and_they_rejoin_to_the_same_state() {
    within(90, async {
        let mut etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        etcd.kill(0);
        let took = eventually("every member disconnected", TTL, || {
            nodes.live().all(|n| !n.connected())
        })
        .await;
        println!(
            "etcd killed: every member disconnected after {} ms (ttl {} ms)",
            ms(took),
            ms(TTL)
        );
        assert!(nodes.deciders().is_empty());
        // Nobody picks another backend on its own, whatever it sees.
        nodes.set_all(false, true);
        always("no switch while etcd is gone", TTL, || {
            nodes.agreed_on(PRIMARY) == Some(g0)
        })
        .await;
        nodes.set_all(true, true);
        let restarted = Instant::now();
        etcd.restart(0).await;
        let took = eventually(
            "every member back, one decider",
            Duration::from_secs(15),
            || nodes.settled(),
        )
        .await;
        println!(
            "etcd restarted: all members back with one decider {} ms after the restart began",
            ms(restarted.elapsed().max(took))
        );
        always("the same agreed state after the rejoin", TTL, || {
            nodes.agreed_on(PRIMARY) == Some(g0) && nodes.settled()
        })
        .await;
        assert!(nodes.switches().is_empty(), "{:?}", nodes.switches());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_etcd_leader_of_three_changes_nothing_visible() {
    within(90, async {
        let mut etcd = Etcd::start_cluster(3).await;
        let leader = etcd.leader().await;
        // The leader first: every member is talking to it when it dies.
        let mut endpoints = etcd.endpoints();
        endpoints.rotate_left(leader);
        let nodes = Nodes::start_at(&endpoints, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        let decider = nodes.deciders()[0].clone();
        etcd.kill(leader);
        let killed = Instant::now();
        let mut down_since: Vec<Option<Instant>> = vec![None; 3];
        let mut longest = Duration::ZERO;
        while killed.elapsed() < 3 * TTL {
            for (i, n) in nodes.0.iter().enumerate() {
                match (n.connected(), down_since[i]) {
                    (false, None) => down_since[i] = Some(Instant::now()),
                    (true, Some(since)) => {
                        longest = longest.max(since.elapsed());
                        down_since[i] = None;
                    }
                    _ => {}
                }
            }
            assert_eq!(
                nodes.agreed_on(PRIMARY),
                Some(g0),
                "the agreed state changed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eventually("settled after the leader change", TTL, || nodes.settled()).await;
        println!(
            "etcd leader killed: decider {decider} -> {}, longest member disconnection {} ms",
            nodes.deciders()[0],
            ms(longest)
        );
        assert!(
            down_since.iter().all(Option::is_none),
            "a member stayed disconnected"
        );
        assert!(longest <= TTL, "a member was disconnected for {longest:?}");
        assert_eq!(nodes.agreed_on(PRIMARY), Some(g0));
        assert!(nodes.switches().is_empty(), "{:?}", nodes.switches());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_step_switch_costs_a_few_round_trips() {
    within(90, async {
        let etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        nodes.ready().await;
        let (mut first, mut switch, mut failback) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let g = nodes.agreed_on(PRIMARY).unwrap();
            let start = Instant::now();
            nodes.set_all(false, true);
            first.push(
                eventually("all on no backend", Duration::from_secs(10), || {
                    nodes.agreed().is_some_and(|a| a.generation > g)
                })
                .await,
            );
            eventually("all on the backup", Duration::from_secs(10), || {
                nodes.agreed_on(BACKUP).is_some()
            })
            .await;
            switch.push(start.elapsed());
            nodes.set_all(true, true);
            failback.push(
                eventually("all on the primary", Duration::from_secs(10), || {
                    nodes.agreed_on(PRIMARY).is_some()
                })
                .await,
            );
        }
        for v in [&mut first, &mut switch, &mut failback] {
            v.sort();
        }
        let list = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let median = |v: &[Duration]| v[2].as_secs_f64() * 1e3;
        println!(
            "primary down in every view -> every member on the backup: median {:.1} ms ({} ms); \
             of which \"no backend\" agreed everywhere after median {:.1} ms ({} ms); \
             failback median {:.1} ms ({} ms)",
            median(&switch),
            list(&switch),
            median(&first),
            list(&first),
            median(&failback),
            list(&failback)
        );
        assert_eq!(nodes.reported(10).await.len(), 10);
        assert!(
            switch[2] < Duration::from_millis(500),
            "median switch {:?}",
            switch[2]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_lost_between_the_two_steps_is_completed_by_its_successor() {
    within(60, async {
        let etcd = Etcd::start().await;
        let mut nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        // The decider's own engine never applies "no backend", then it dies.
        let old = nodes.index_of_decider();
        nodes.0[old].withhold.store(true, Ordering::SeqCst);
        nodes.set_all(false, true);
        eventually("the first step everywhere", Duration::from_secs(10), || {
            nodes.agreed()
                == Some(Agreed {
                    generation: g0 + 1,
                    active: None,
                })
        })
        .await;
        let old_name = nodes.0[old].name.clone();
        nodes.0[old].crash();
        let (gone, then) = nodes
            .after_expiry(&old_name, "the successor publishes the backup", || {
                nodes.agreed_on(BACKUP).is_some()
            })
            .await;
        println!(
            "decider lost between the steps: its lease expired after {} ms, its successor completed the switch {} ms later",
            ms(gone),
            ms(then)
        );
        assert_eq!(nodes.agreed_on(BACKUP), Some(g0 + 2));
        let switches = nodes.reported(1).await;
        assert_eq!(switches.len(), 1, "{switches:?}");
        assert_eq!(
            (switches[0].from.as_deref(), switches[0].reason),
            (Some(PRIMARY), SwitchReason::HealthCheck),
            "the successor reports the switch the old decider began"
        );
        assert!(nodes.0[old].switches.lock().unwrap().is_empty());
    })
    .await;
}

/// What the relay does to the traffic it carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    /// Watch streams deliver nothing.
    stall_watches: bool,
    /// Nothing gets through either way: a partition.
    blackhole: bool,
}

/// A TCP relay in front of etcd that can lose the answers of transactions
/// (applied by etcd, answer never delivered), stall watch streams and
/// black-hole everything. A connection that suffered a fault is closed
/// when the fault is lifted (its stream lost bytes).
struct Relay {
    addr: std::net::SocketAddr,
    /// Lose the answers of this many more transactions.
    lose_txn_answers: Arc<std::sync::atomic::AtomicUsize>,
    /// Transaction answers lost so far.
    lost: Arc<std::sync::atomic::AtomicUsize>,
    faults: watch::Sender<Faults>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let target: std::net::SocketAddr = target.trim_start_matches("http://").parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lose_txn_answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lost = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (faults, faults_rx) = watch::channel(Faults::default());
        let task = {
            let (lose, lost) = (lose_txn_answers.clone(), lost.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        continue;
                    };
                    let conn = Conn {
                        lose: lose.clone(),
                        lost: lost.clone(),
                        faults: faults_rx.clone(),
                    };
                    tokio::spawn(conn.relay(client, server));
                }
            })
        };
        Relay {
            addr,
            lose_txn_answers,
            lost,
            faults,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, change: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(change);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Conn {
    lose: Arc<std::sync::atomic::AtomicUsize>,
    lost: Arc<std::sync::atomic::AtomicUsize>,
    faults: watch::Receiver<Faults>,
}

impl Conn {
    async fn relay(self, client: tokio::net::TcpStream, server: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let lose_answer = Arc::new(AtomicBool::new(false));
        let is_watch = Arc::new(AtomicBool::new(false));
        // Set once this connection lost bytes to a fault.
        let hurt = Arc::new(AtomicBool::new(false));
        let up = {
            let (lose_answer, is_watch, hurt) =
                (lose_answer.clone(), is_watch.clone(), hurt.clone());
            let (lose, faults) = (self.lose.clone(), self.faults.clone());
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if faults.borrow().blackhole {
                        hurt.store(true, Ordering::SeqCst);
                        continue;
                    }
                    let chunk = &buf[..n];
                    if contains(chunk, b"POST /v3/kv/txn ")
                        && lose
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        lose_answer.store(true, Ordering::SeqCst);
                    }
                    if contains(chunk, b"POST /v3/watch ") {
                        is_watch.store(true, Ordering::SeqCst);
                    }
                    if sw.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            }
        };
        let mut faults = self.faults;
        let lost = self.lost;
        let down = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    read = sr.read(&mut buf) => {
                        let n = match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if lose_answer.load(Ordering::SeqCst) {
                            lost.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let now = *faults.borrow();
                        if now.blackhole || (now.stall_watches && is_watch.load(Ordering::SeqCst)) {
                            hurt.store(true, Ordering::SeqCst);
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    changed = faults.changed() => {
                        let now = *faults.borrow_and_update();
                        let lifted = !now.blackhole && !now.stall_watches;
                        if changed.is_err() || (lifted && hurt.load(Ordering::SeqCst)) {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreed_state_writes_whose_answers_are_lost_are_read_back() {
    within(60, async {
        let etcd = Etcd::start().await;
        let relay = Relay::start(etcd.endpoint(0)).await;
        let nodes = Nodes::start_at(&[relay.endpoint()], spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        // Both steps of the switch are applied by etcd, their answers lost.
        relay.lose_txn_answers.store(2, Ordering::SeqCst);
        nodes.set_all(false, true);
        let took = eventually("all on the backup", Duration::from_secs(10), || {
            nodes.agreed_on(BACKUP).is_some()
        })
        .await;
        println!("switch with both answers lost took {} ms", ms(took));
        assert_eq!(
            relay.lost.load(Ordering::SeqCst),
            2,
            "both answers were lost"
        );
        always("settled", Duration::from_millis(500), || {
            nodes.agreed_on(BACKUP) == Some(g0 + 2)
        })
        .await;
        let switches = nodes.reported(1).await;
        assert_eq!(
            switches.len(),
            1,
            "reported once, though its answer was lost: {switches:?}"
        );
        assert_eq!(switches[0].generation, g0 + 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_watch_fell_behind_a_compaction_reads_again_and_catches_up() {
    within(60, async {
        let etcd = Etcd::start().await;
        let relay = Relay::start(etcd.endpoint(0)).await;
        let mut nodes = Nodes(vec![
            Node::start(&etcd.endpoints(), "px1", spec(Duration::ZERO)),
            Node::start(&etcd.endpoints(), "px2", spec(Duration::ZERO)),
        ]);
        eventually("a decider", Duration::from_secs(10), || nodes.settled()).await;
        // px3 comes through the relay and is not the decider.
        nodes.0.push(Node::start(
            &[relay.endpoint()],
            "px3",
            spec(Duration::ZERO),
        ));
        let g0 = nodes.ready().await;
        assert!(!nodes.0[2].is_decider());
        relay.set(|f| f.stall_watches = true);
        nodes.set_all(false, true);
        eventually(
            "the first step at px1 and px2",
            Duration::from_secs(10),
            || {
                nodes.0[..2].iter().all(|n| {
                    n.agreed()
                        == Some(Agreed {
                            generation: g0 + 1,
                            active: None,
                        })
                })
            },
        )
        .await;
        always(
            "px3 does not see it, so nobody moves on",
            Duration::from_millis(500),
            || {
                nodes.0[2].agreed().map(|a| a.generation) == Some(g0)
                    && nodes.agreed_on(BACKUP).is_none()
            },
        )
        .await;
        let client = Client::new(&etcd.endpoints(), Duration::from_secs(1)).unwrap();
        let (_, revision) = client.get(b"/").await.unwrap();
        etcd.compact(revision).await;
        let released = Instant::now();
        relay.set(|f| f.stall_watches = false);
        let took = eventually(
            "px3 catches up and the switch completes",
            Duration::from_secs(5),
            || nodes.agreed_on(BACKUP).is_some(),
        )
        .await;
        println!(
            "watch behind a compaction: caught up and switched {} ms after its stream broke",
            ms(took.max(released.elapsed()))
        );
        assert_eq!(nodes.agreed_on(BACKUP), Some(g0 + 2));
        assert_eq!(nodes.reported(1).await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_cut_off_from_etcd_knows_it_before_the_others_replace_it() {
    within(60, async {
        let etcd = Etcd::start().await;
        let relay = Relay::start(etcd.endpoint(0)).await;
        // px3, behind the relay, starts first and becomes the decider.
        let mut nodes = Nodes(vec![Node::start(&[relay.endpoint()], "px3", spec(Duration::ZERO))]);
        eventually("px3 decides", Duration::from_secs(10), || nodes.settled()).await;
        for name in ["px1", "px2"] {
            nodes.0.push(Node::start(&etcd.endpoints(), name, spec(Duration::ZERO)));
        }
        let g0 = nodes.ready().await;
        assert_eq!(nodes.deciders(), ["px3"]);

        relay.set(|f| f.blackhole = true);
        let cut = Instant::now();
        let (mut lost_at, mut gone_at, mut replaced_at) = (None, None, None);
        while gone_at.is_none() || replaced_at.is_none() {
            assert!(cut.elapsed() < TTL + EXPIRY_SLACK + REACTION, "px3 never left the others' view");
            let px3 = &nodes.0[0];
            if lost_at.is_none() && !px3.connected() {
                assert!(!px3.is_decider(), "disconnected but still the decider");
                lost_at = Some(cut.elapsed());
            }
            let others = &nodes.0[1..];
            if gone_at.is_none()
                && others.iter().all(|n| !n.handle.status().members.contains(&"px3".to_string()))
            {
                gone_at = Some(cut.elapsed());
            }
            if replaced_at.is_none() && others.iter().any(|n| n.is_decider()) {
                assert!(!px3.connected() && !px3.is_decider(), "two deciders at once");
                replaced_at = Some(cut.elapsed());
            }
            assert_eq!(px3.agreed().map(|a| a.generation), Some(g0));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (lost_at, gone_at, replaced_at) = (lost_at.unwrap(), gone_at.unwrap(), replaced_at.unwrap());
        println!(
            "decider cut off from etcd: it knew after {} ms, the others saw its lease expire after {} ms \
             and had a new decider after {} ms (ttl {} ms)",
            ms(lost_at),
            ms(gone_at),
            ms(replaced_at),
            ms(TTL)
        );
        assert!(lost_at <= TTL, "px3 noticed only after {lost_at:?}");
        assert!(lost_at < gone_at && lost_at < replaced_at);

        relay.set(|f| f.blackhole = false);
        let took = eventually("px3 rejoins", Duration::from_secs(10), || {
            nodes.settled() && nodes.0[0].connected()
        })
        .await;
        println!("partition healed: px3 a member again after {} ms", ms(took));
        assert_eq!(nodes.agreed_on(PRIMARY), Some(g0), "no switch throughout");
        assert!(nodes.switches().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_choice_switches_with_reason_reload_and_adds_services() {
    within(60, async {
        let etcd = Etcd::start().await;
        let nodes = Nodes::start(&etcd, spec(Duration::ZERO));
        let g0 = nodes.ready().await;
        assert!(
            nodes.0[0].handle.agreed("cache").is_none(),
            "not a service yet"
        );
        // The backup becomes the first choice, and a second service appears.
        let reordered = ServiceSpec {
            backends: vec![BACKUP.into(), PRIMARY.into()],
            ..spec(Duration::ZERO)
        };
        let cache = ServiceSpec {
            name: "cache".into(),
            ..spec(Duration::ZERO)
        };
        for n in &nodes.0 {
            n.handle
                .update_services(vec![reordered.clone(), cache.clone()]);
        }
        eventually(
            "the reload moved everybody",
            Duration::from_secs(10),
            || nodes.agreed_on(BACKUP).is_some(),
        )
        .await;
        assert_eq!(nodes.agreed_on(BACKUP), Some(g0 + 2));
        let switches = nodes.reported(1).await;
        assert_eq!(switches.len(), 1, "{switches:?}");
        assert_eq!(switches[0].reason, SwitchReason::Reload);
        eventually(
            "the new service has an agreed state everywhere",
            Duration::from_secs(10),
            || {
                nodes.live().all(|n| {
                    n.handle
                        .agreed("cache")
                        .unwrap()
                        .borrow()
                        .as_ref()
                        .map(|a| a.active.clone())
                        == Some(Some(PRIMARY.into()))
                })
            },
        )
        .await;
    })
    .await;
}
