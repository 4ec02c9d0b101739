//! The fuzz runner end to end on real `ldr` clusters with bidirectional LDR (build the binary
//! first: `cargo build -p ldr-cli`, or point `LDR_BIN` at it):
//! - a fixed seed on 1-node clusters whose schedule has a kill, a node pause, a cut, a delay
//!   and a job pause: every step runs on time, every write is accounted for, and every
//!   checker (quiesce, convergence, LWW oracle with the clusters' origin ids, monotonic
//!   replicated time, accounting) passes;
//! - a run that must fail (a job left paused): the error names the seed, the fault timeline
//!   with the harness's repairs, and the write history of every key the clusters disagree on,
//!   and the nodes are healed afterwards.
//!
//! Set `SEED=` to run another seed through the first test.

use std::time::Duration;

use ldr_sim::fuzz::{
    GenConfig, Op, Runner, RunnerConfig, SCENARIO_VERSION, Scenario, Side, Step,
    setup_bidirectional,
};
use ldr_sim::{Cluster, ClusterSpec};

/// Kill, node pause, cut, delay and job pause on 1-node clusters (see `ldr sim fuzz
/// --dry-run --seed 7 --nodes 1 --duration 12s --keys 8 --faults 5`).
const FIXED_SEED: u64 = 7;

fn gen_config() -> GenConfig {
    GenConfig {
        nodes_per_cluster: 1,
        keys: 8,
        writes: 120,
        duration_ms: 12_000,
        faults: 5,
        ..GenConfig::default()
    }
}

async fn clusters(nodes: usize) -> (Cluster, Cluster) {
    let spec = |name: &str| {
        ClusterSpec::new(name, nodes)
            .expect("the ldr binary (cargo build -p ldr-cli, or LDR_BIN)")
            .proxied(true)
            .ready_timeout(Duration::from_secs(180))
    };
    let (a, b) = tokio::try_join!(Cluster::start(spec("a")), Cluster::start(spec("b")))
        .expect("start clusters a and b");
    setup_bidirectional(&a, &b, "kv")
        .await
        .expect("bidirectional LDR between a and b");
    (a, b)
}

fn assert_healed(cluster: &Cluster) {
    assert!(
        cluster
            .nodes()
            .iter()
            .all(|n| n.running && !n.paused && n.clock_offset_ns == 0),
        "cluster {} is not healed: {:?}",
        cluster.name(),
        cluster.nodes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_seed_passes_every_checker_on_real_clusters() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FIXED_SEED);
    eprintln!("SEED={seed} (set SEED to run another seed)");
    let scenario = Scenario::generate(seed, &gen_config()).expect("generate");
    eprintln!("fault schedule:\n{}", scenario.fault_timeline().join("\n"));
    let (a, b) = clusters(1).await;

    // Why: the run executes every step on schedule, heals, and every checker passes.
    let report = Runner::new(&a, &b, RunnerConfig::default())
        .run(&scenario)
        .await
        .unwrap_or_else(|e| panic!("SEED={seed}: {e}"));
    eprintln!("{report}");
    assert_eq!(report.seed, seed);
    assert_eq!(
        report.timeline.len(),
        scenario.fault_timeline().len(),
        "every fault step ran, and none needed repairing: {:?}",
        report.timeline
    );
    assert_eq!(
        report.writes_acknowledged + report.writes_ambiguous + report.writes_failed,
        scenario.writes(),
        "every write accounted for"
    );
    // (most writes go through: only a kill's downtime and pauses refuse or stall them)
    assert!(
        report.writes_acknowledged > scenario.writes() / 4,
        "{report:?}"
    );
    let last_ms = scenario.steps.last().expect("steps").at_ms;
    assert!(
        report.elapsed_s * 1000.0 >= last_ms as f64,
        "steps must not run early: last step at {last_ms}ms, {report:?}"
    );
    // Why: the oracle ordered exact ties by the clusters' real origin ids.
    let [origin_a, origin_b] = report
        .origin_ids
        .expect("crdb_internal.cluster_origin_id()");
    assert!(origin_a != origin_b && origin_a != 0 && origin_b != 0);
    assert_eq!(report.replicated_time.len(), 2);
    assert!(
        report.replicated_time.iter().all(|r| r.samples > 0),
        "{report:?}"
    );
    assert_eq!(report.accounting.len(), 2, "{report:?}");
    // Why: after a run every node is up again, unskewed.
    assert_healed(&a);
    assert_healed(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_reports_seed_timeline_and_key_histories() {
    let (a, b) = clusters(1).await;
    let write = |at_ms, cluster, key, value: &str| Step {
        at_ms,
        op: Op::Write {
            cluster,
            node: 1,
            key,
            value: Some(value.to_string()),
        },
    };
    // B's job (which applies A's changes) is paused and never resumed, so A's writes never
    // reach B; A's node is killed and left for the harness to restart.
    let scenario = Scenario {
        version: SCENARIO_VERSION,
        seed: 4242,
        config: GenConfig {
            nodes_per_cluster: 1,
            ..GenConfig::default()
        },
        steps: vec![
            Step {
                at_ms: 0,
                op: Op::PauseJobs { cluster: Side::B },
            },
            write(100, Side::A, 1, "a-one"),
            write(150, Side::A, 2, "a-two"),
            write(200, Side::B, 3, "b-three"),
            Step {
                at_ms: 1500,
                op: Op::Kill {
                    cluster: Side::A,
                    node: 1,
                },
            },
        ],
    };
    let config = RunnerConfig {
        converge_timeout: Duration::from_secs(5),
        ..RunnerConfig::default()
    };
    let text = Runner::new(&a, &b, config)
        .run(&scenario)
        .await
        .expect_err("B never applies A's writes")
        .to_string();
    eprintln!("{text}");
    // Why: the report says how to reproduce, what the faults were, and why it failed.
    assert!(text.contains("seed 4242"), "{text}");
    assert!(
        text.contains("pause jobs on b")
            && text.contains("kill a/1")
            && text.contains("(heal) restart a/1"),
        "{text}"
    );
    assert!(
        text.contains("every LDR job on cluster b to replicate past") && text.contains("paused"),
        "{text}"
    );
    // Why: the keys that differ come with their histories.
    assert!(
        text.contains("keys that differ between the clusters (2)"),
        "{text}"
    );
    assert!(
        text.contains("key 1: expected \"a-one\"")
            && text.contains("ok  cluster a: \"a-one\"")
            && text.contains("BAD cluster b: absent")
            && text.contains("upsert \"a-one\" [Acknowledged"),
        "{text}"
    );
    assert!(!text.contains("key 3:"), "key 3 is on both sides: {text}");
    // Why: a failed run still leaves the nodes healed.
    assert_healed(&a);
    assert_healed(&b);
}
