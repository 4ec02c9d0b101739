//! Scenarios: a timed list of writes (on cluster A or B, to a key) and faults (kill/restart,
//! pause/resume, network cut/blackhole/delay between the clusters, clock skew, pausing and
//! resuming a cluster's LDR jobs), generated
//! from a seed with ChaCha8 — the same seed and [`GenConfig`] always give the same scenario,
//! byte for byte — and stored as JSON so a failing run can be replayed from its file.
//!
//! The generator keeps scenarios well formed: fault episodes on one node never overlap, only
//! one network fault is active at a time, a cluster's jobs are never paused while one of its
//! nodes is faulty (the `PAUSE JOB` needs a node that answers), and every episode ends
//! (restart, resume, heal, clock back to 0, jobs resumed) before the scenario's end, so the
//! clusters can converge afterwards.

use std::path::Path;

use rand::distr::{Alphanumeric, Distribution};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};
use crate::proxy::Fault;

/// Scenario file format version.
pub const SCENARIO_VERSION: u32 = 1;

/// One of the two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

impl Side {
    /// `"a"` / `"b"`: the origin label of writes recorded on that side.
    pub fn label(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// Kinds of fault the generator may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Kill,
    Pause,
    Cut,
    Blackhole,
    Delay,
    ClockSkew,
    /// `PAUSE JOB` / `RESUME JOB` of a cluster's LDR jobs.
    PauseJob,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Cut,
        FaultKind::Blackhole,
        FaultKind::Delay,
        FaultKind::ClockSkew,
        FaultKind::PauseJob,
    ];
}

/// One operation of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Upsert `value` into `key` (or delete it when `value` is `None`) through `node` of
    /// `cluster`.
    Write {
        cluster: Side,
        node: usize,
        key: i64,
        value: Option<String>,
    },
    Kill {
        cluster: Side,
        node: usize,
    },
    Restart {
        cluster: Side,
        node: usize,
    },
    Pause {
        cluster: Side,
        node: usize,
    },
    Resume {
        cluster: Side,
        node: usize,
    },
    /// Sets the fault proxies of `cluster` (both clusters when `None`): the traffic the other
    /// cluster sends to it.
    Network {
        cluster: Option<Side>,
        fault: Fault,
    },
    /// Restarts the node with its clock shifted by `offset_ns`.
    ClockSkew {
        cluster: Side,
        node: usize,
        offset_ns: i64,
    },
    /// `PAUSE JOB` every LDR job of `cluster` (the jobs applying the other cluster's changes)
    /// and wait until they are paused.
    PauseJobs {
        cluster: Side,
    },
    /// `RESUME JOB` every LDR job of `cluster`.
    ResumeJobs {
        cluster: Side,
    },
}

impl Op {
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Write { .. })
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write {
                cluster,
                node,
                key,
                value: Some(v),
            } => write!(f, "write {}/{node} key {key} = {v:?}", cluster.label()),
            Op::Write {
                cluster,
                node,
                key,
                value: None,
            } => write!(f, "delete {}/{node} key {key}", cluster.label()),
            Op::Kill { cluster, node } => write!(f, "kill {}/{node}", cluster.label()),
            Op::Restart { cluster, node } => write!(f, "restart {}/{node}", cluster.label()),
            Op::Pause { cluster, node } => write!(f, "pause {}/{node}", cluster.label()),
            Op::Resume { cluster, node } => write!(f, "resume {}/{node}", cluster.label()),
            Op::Network {
                cluster: Some(side),
                fault,
            } => write!(f, "network into {} {fault}", side.label()),
            Op::Network {
                cluster: None,
                fault,
            } => write!(f, "network both ways {fault}"),
            Op::PauseJobs { cluster } => write!(f, "pause jobs on {}", cluster.label()),
            Op::ResumeJobs { cluster } => write!(f, "resume jobs on {}", cluster.label()),
            Op::ClockSkew {
                cluster,
                node,
                offset_ns,
            } => write!(
                f,
                "clock skew {}/{node} {}ms",
                cluster.label(),
                offset_ns / 1_000_000
            ),
        }
    }
}

/// An operation and when it starts, in milliseconds after the scenario's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenConfig {
    pub nodes_per_cluster: usize,
    /// Keys are `0..keys`: fewer keys, more conflicts.
    pub keys: i64,
    pub writes: usize,
    pub duration_ms: u64,
    /// Fault episodes to attempt (some are skipped when they would overlap).
    pub faults: usize,
    pub fault_kinds: Vec<FaultKind>,
    pub max_clock_skew_ms: u64,
    pub max_delay_ms: u64,
    pub delete_percent: u8,
    pub value_bytes: usize,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            nodes_per_cluster: 3,
            keys: 20,
            writes: 200,
            duration_ms: 20_000,
            faults: 6,
            fault_kinds: FaultKind::ALL.to_vec(),
            max_clock_skew_ms: 200,
            max_delay_ms: 300,
            delete_percent: 10,
            value_bytes: 6,
        }
    }
}

impl GenConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(SimError::InvalidArgument(m.to_string()));
        if self.nodes_per_cluster == 0 {
            return bad("nodes_per_cluster must be at least 1");
        }
        if self.keys <= 0 {
            return bad("keys must be positive");
        }
        if self.duration_ms < 1000 {
            return bad("duration_ms must be at least 1000");
        }
        if self.delete_percent > 100 {
            return bad("delete_percent must be at most 100");
        }
        Ok(())
    }
}

/// A generated (or hand-written) scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub version: u32,
    pub seed: u64,
    pub config: GenConfig,
    /// Sorted by `at_ms` (stable: equal times keep generation order).
    pub steps: Vec<Step>,
}

/// A fault episode's target, for the no-overlap rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Node(Side, usize),
    Network,
    Jobs(Side),
}

impl Target {
    /// Episodes on conflicting targets must not overlap: the same target twice, or a
    /// cluster's jobs and one of its nodes.
    fn conflicts(self, other: Target) -> bool {
        match (self, other) {
            (Target::Jobs(a), Target::Node(b, _)) | (Target::Node(b, _), Target::Jobs(a)) => a == b,
            _ => self == other,
        }
    }
}

impl Scenario {
    /// Generates the scenario for `seed`.
    pub fn generate(seed: u64, config: &GenConfig) -> Result<Scenario> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut steps: Vec<Step> = Vec::with_capacity(config.writes + 2 * config.faults);
        let side = |rng: &mut ChaCha8Rng| {
            if rng.random_bool(0.5) {
                Side::A
            } else {
                Side::B
            }
        };

        for i in 0..config.writes {
            let at_ms = rng.random_range(0..config.duration_ms);
            let cluster = side(&mut rng);
            let node = rng.random_range(1..=config.nodes_per_cluster);
            let key = rng.random_range(0..config.keys);
            let value = if rng.random_range(0..100u8) < config.delete_percent {
                None
            } else {
                let suffix: String = Alphanumeric
                    .sample_iter(&mut rng)
                    .take(config.value_bytes)
                    .map(char::from)
                    .collect();
                Some(format!("{}{i}-{suffix}", cluster.label()))
            };
            steps.push(Step {
                at_ms,
                op: Op::Write {
                    cluster,
                    node,
                    key,
                    value,
                },
            });
        }

        let mut busy: Vec<(Target, u64, u64)> = Vec::new();
        if !config.fault_kinds.is_empty() {
            for _ in 0..config.faults {
                let kind = config.fault_kinds[rng.random_range(0..config.fault_kinds.len())];
                let start = rng.random_range(0..config.duration_ms * 4 / 5);
                let longest = (config.duration_ms / 4).max(600);
                let end = (start + rng.random_range(500..=longest)).min(config.duration_ms - 1);
                let cluster = side(&mut rng);
                let node = rng.random_range(1..=config.nodes_per_cluster);
                let network_side = match rng.random_range(0..3u8) {
                    0 => Some(Side::A),
                    1 => Some(Side::B),
                    _ => None,
                };
                let delay_ms = rng.random_range(10..=config.max_delay_ms.max(10));
                let skew_ms = rng.random_range(1..=config.max_clock_skew_ms.max(1)) as i64;
                let skew_ns = if rng.random_bool(0.5) {
                    skew_ms
                } else {
                    -skew_ms
                } * 1_000_000;
                let target = match kind {
                    FaultKind::Kill | FaultKind::Pause | FaultKind::ClockSkew => {
                        Target::Node(cluster, node)
                    }
                    FaultKind::Cut | FaultKind::Blackhole | FaultKind::Delay => Target::Network,
                    FaultKind::PauseJob => Target::Jobs(cluster),
                };
                // Episodes on one target never overlap (a kill during a pause, two cuts…).
                if busy
                    .iter()
                    .any(|(t, s, e)| t.conflicts(target) && start <= *e && *s <= end)
                {
                    continue;
                }
                busy.push((target, start, end));
                let (begin, finish) = match kind {
                    FaultKind::Kill => (Op::Kill { cluster, node }, Op::Restart { cluster, node }),
                    FaultKind::Pause => (Op::Pause { cluster, node }, Op::Resume { cluster, node }),
                    FaultKind::ClockSkew => (
                        Op::ClockSkew {
                            cluster,
                            node,
                            offset_ns: skew_ns,
                        },
                        Op::ClockSkew {
                            cluster,
                            node,
                            offset_ns: 0,
                        },
                    ),
                    FaultKind::Cut => (
                        Op::Network {
                            cluster: network_side,
                            fault: Fault::Cut,
                        },
                        Op::Network {
                            cluster: network_side,
                            fault: Fault::Pass,
                        },
                    ),
                    FaultKind::Blackhole => (
                        Op::Network {
                            cluster: network_side,
                            fault: Fault::Drop,
                        },
                        Op::Network {
                            cluster: network_side,
                            fault: Fault::Pass,
                        },
                    ),
                    FaultKind::PauseJob => (Op::PauseJobs { cluster }, Op::ResumeJobs { cluster }),
                    FaultKind::Delay => (
                        Op::Network {
                            cluster: network_side,
                            fault: Fault::Delay { ms: delay_ms },
                        },
                        Op::Network {
                            cluster: network_side,
                            fault: Fault::Pass,
                        },
                    ),
                };
                steps.push(Step {
                    at_ms: start,
                    op: begin,
                });
                steps.push(Step {
                    at_ms: end,
                    op: finish,
                });
            }
        }
        steps.sort_by_key(|s| s.at_ms);
        Ok(Scenario {
            version: SCENARIO_VERSION,
            seed,
            config: config.clone(),
            steps,
        })
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(text: &str) -> Result<Scenario> {
        let scenario: Scenario = serde_json::from_str(text)?;
        if scenario.version != SCENARIO_VERSION {
            return Err(SimError::InvalidArgument(format!(
                "scenario version {} is not supported (expected {SCENARIO_VERSION})",
                scenario.version
            )));
        }
        Ok(scenario)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()?)
            .map_err(|e| SimError::io(format!("writing {}", path.display()), e))
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SimError::io(format!("reading {}", path.display()), e))?;
        Scenario::from_json(&text)
    }

    pub fn writes(&self) -> usize {
        self.steps.iter().filter(|s| s.op.is_write()).count()
    }

    /// The non-write steps, as `"   1.203s kill a/2"` lines.
    pub fn fault_timeline(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| !s.op.is_write())
            .map(|s| format!("{:>8.3}s {}", s.at_ms as f64 / 1000.0, s.op))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn test_seed() -> u64 {
        let seed = crate::workload::seed_from_env();
        eprintln!("SEED={seed} (set SEED to reproduce)");
        seed
    }

    #[test]
    fn same_seed_gives_the_identical_scenario() {
        let seed = test_seed();
        let config = GenConfig::default();
        let one = Scenario::generate(seed, &config).expect("generate");
        let two = Scenario::generate(seed, &config).expect("generate");
        assert_eq!(one, two);
        assert_eq!(
            one.to_json().expect("json"),
            two.to_json().expect("json"),
            "byte-identical JSON"
        );
        let other = Scenario::generate(seed.wrapping_add(1), &config).expect("generate");
        assert_ne!(one.steps, other.steps, "different seeds must differ");
    }

    #[test]
    fn json_round_trip_and_format() {
        let scenario = Scenario::generate(
            7,
            &GenConfig {
                writes: 5,
                faults: 3,
                ..GenConfig::default()
            },
        )
        .expect("generate");
        let json = scenario.to_json().expect("json");
        assert_eq!(Scenario::from_json(&json).expect("parse"), scenario);
        assert!(json.contains("\"op\": \"write\""), "{json}");
        let hand_written = r#"{"version":1,"seed":0,"config":{"nodes_per_cluster":1,"keys":1,"writes":1,"duration_ms":1000,"faults":0,"fault_kinds":[],"max_clock_skew_ms":0,"max_delay_ms":0,"delete_percent":0,"value_bytes":1},
            "steps":[{"at_ms":5,"op":"network","cluster":null,"fault":{"mode":"delay","ms":50}},{"at_ms":9,"op":"write","cluster":"b","node":1,"key":3,"value":null}]}"#;
        let parsed = Scenario::from_json(hand_written).expect("hand-written scenario");
        assert_eq!(
            parsed.steps[0].op,
            Op::Network {
                cluster: None,
                fault: Fault::Delay { ms: 50 }
            }
        );
        assert_eq!(
            parsed.steps[1].op,
            Op::Write {
                cluster: Side::B,
                node: 1,
                key: 3,
                value: None
            }
        );
        assert!(
            Scenario::from_json(&hand_written.replace("\"version\":1", "\"version\":9")).is_err()
        );
    }

    /// Every generated scenario is well formed, over many seeds.
    #[test]
    fn generated_scenarios_are_well_formed() {
        let base = test_seed();
        let config = GenConfig {
            writes: 50,
            faults: 12,
            duration_ms: 10_000,
            ..GenConfig::default()
        };
        for i in 0..300u64 {
            let seed = base.wrapping_add(i);
            let s = Scenario::generate(seed, &config).expect("generate");
            let ctx = format!("SEED={seed}");
            assert_eq!(s.writes(), 50, "{ctx}");
            assert!(
                s.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
                "{ctx}: steps not sorted"
            );
            assert!(
                s.steps.iter().all(|st| st.at_ms < config.duration_ms),
                "{ctx}: step after the end"
            );
            let mut killed = BTreeMap::new();
            let mut paused = BTreeMap::new();
            let mut skewed = BTreeMap::new();
            let mut jobs_paused = BTreeMap::new();
            let mut network = Fault::Pass;
            for step in &s.steps {
                match &step.op {
                    Op::Write { node, key, .. } => {
                        assert!((1..=3).contains(node) && (0..20).contains(key), "{ctx}")
                    }
                    Op::Kill { cluster, node } => {
                        assert!(
                            killed.insert((*cluster, *node), ()).is_none(),
                            "{ctx}: double kill"
                        );
                        assert!(
                            !paused.contains_key(&(*cluster, *node)),
                            "{ctx}: kill while paused"
                        );
                        assert!(
                            !jobs_paused.contains_key(cluster),
                            "{ctx}: kill while the cluster's jobs are paused"
                        );
                    }
                    Op::Restart { cluster, node } => assert!(
                        killed.remove(&(*cluster, *node)).is_some(),
                        "{ctx}: restart without kill"
                    ),
                    Op::Pause { cluster, node } => {
                        assert!(
                            paused.insert((*cluster, *node), ()).is_none(),
                            "{ctx}: double pause"
                        );
                        assert!(
                            !killed.contains_key(&(*cluster, *node)),
                            "{ctx}: pause while killed"
                        );
                        assert!(
                            !jobs_paused.contains_key(cluster),
                            "{ctx}: pause while the cluster's jobs are paused"
                        );
                    }
                    Op::Resume { cluster, node } => assert!(
                        paused.remove(&(*cluster, *node)).is_some(),
                        "{ctx}: resume without pause"
                    ),
                    Op::ClockSkew {
                        cluster,
                        node,
                        offset_ns,
                    } => {
                        if *offset_ns == 0 {
                            assert!(
                                skewed.remove(&(*cluster, *node)).is_some(),
                                "{ctx}: reset without skew"
                            );
                        } else {
                            assert!(offset_ns.unsigned_abs() <= 200_000_000, "{ctx}");
                            assert!(
                                !jobs_paused.contains_key(cluster),
                                "{ctx}: skew while the cluster's jobs are paused"
                            );
                            assert!(
                                skewed.insert((*cluster, *node), ()).is_none(),
                                "{ctx}: double skew"
                            );
                        }
                    }
                    Op::PauseJobs { cluster } => {
                        assert!(
                            jobs_paused.insert(*cluster, ()).is_none(),
                            "{ctx}: double job pause"
                        );
                        assert!(
                            [&killed, &paused, &skewed]
                                .iter()
                                .all(|m| m.keys().all(|(side, _)| side != cluster)),
                            "{ctx}: jobs paused while a node of the cluster is faulty"
                        );
                    }
                    Op::ResumeJobs { cluster } => assert!(
                        jobs_paused.remove(cluster).is_some(),
                        "{ctx}: job resume without pause"
                    ),
                    Op::Network { fault, .. } => {
                        if *fault == Fault::Pass {
                            assert_ne!(network, Fault::Pass, "{ctx}: heal without fault");
                        } else {
                            assert_eq!(network, Fault::Pass, "{ctx}: overlapping network faults");
                        }
                        network = *fault;
                    }
                }
            }
            assert!(
                killed.is_empty()
                    && paused.is_empty()
                    && skewed.is_empty()
                    && jobs_paused.is_empty()
                    && network == Fault::Pass,
                "{ctx}: scenario does not end healed"
            );
        }
    }

    #[test]
    fn restricted_fault_kinds_are_respected() {
        let config = GenConfig {
            fault_kinds: vec![FaultKind::Pause],
            faults: 10,
            ..GenConfig::default()
        };
        let s = Scenario::generate(3, &config).expect("generate");
        assert!(s.steps.iter().all(|st| matches!(
            st.op,
            Op::Write { .. } | Op::Pause { .. } | Op::Resume { .. }
        )));
        let none = Scenario::generate(
            3,
            &GenConfig {
                fault_kinds: vec![],
                ..GenConfig::default()
            },
        )
        .expect("generate");
        assert!(none.fault_timeline().is_empty());
        assert!(
            Scenario::generate(
                3,
                &GenConfig {
                    keys: 0,
                    ..GenConfig::default()
                }
            )
            .is_err()
        );
    }
}
