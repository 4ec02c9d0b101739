//! Write intents: provisional versions of a transaction that is not finished yet.
//!
//! An intent is stored as the version of its key at [`INTENT_TS`] (`Timestamp::MAX`, which no
//! committed write can have), so it sorts before every committed version of the key, travels
//! in Raft commands, snapshots and checksums like any version, and is invisible to reads that
//! seek to a read timestamp below it. Its value holds the transaction id, the key of the
//! transaction record, the timestamp the intent was written at (the transaction commits at or
//! above it) and the provisional value.
//!
//! Rules the engine enforces:
//! - a writer (transactional or not) that finds another transaction's intent on any key it
//!   writes fails with [`StorageError::WriteIntent`] and writes nothing: the caller finds the
//!   transaction's record, waits for it or pushes it, resolves the intent and retries;
//! - a read at `read_ts` that meets an intent written at or below `read_ts` fails the same way
//!   (the transaction may commit at a timestamp the read must see); an intent written above
//!   `read_ts` is ignored (its transaction commits above it);
//! - resolving an intent ([`Engine::evaluate_resolve`]) removes it and, for a committed
//!   transaction, writes its value at the commit timestamp: only then does a commit event
//!   reach rangefeeds, with the previous committed value. Resolution is idempotent: an intent
//!   already gone (or another transaction's) is left alone;
//! - a version at [`INTENT_TS`] without a value in a command is the removal of an intent.

use ldr_types::Timestamp;
use ldr_types::keys::pretty_key;

use crate::encoding;
use crate::engine::{corruption, read_key};
use crate::replicated::{Evaluation, duplicate_key_check};
use crate::{Engine, Result, RowWrite, StorageError, ValueHeader, Version, VersionWrite};

/// The timestamp intents are stored at.
pub const INTENT_TS: Timestamp = Timestamp::MAX;

/// A transaction's identity.
pub type TxnId = [u8; 16];

/// Which transaction writes an intent, and where its record lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxnMeta {
    pub txn_id: TxnId,
    /// The key of the transaction record (in the range of the transaction's anchor key).
    pub record_key: Vec<u8>,
}

/// An intent as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub txn: TxnMeta,
    /// The timestamp the intent was written at; the transaction commits at or above it.
    pub write_ts: Timestamp,
    pub header: ValueHeader,
    /// The provisional value (`None`: a provisional delete).
    pub value: Option<Vec<u8>>,
}

/// Another transaction's intent met by a read or a write: what the caller needs to find and
/// push its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentConflict {
    pub key: Vec<u8>,
    pub txn: TxnMeta,
    pub write_ts: Timestamp,
    /// The provisional value (what the transaction itself reads back).
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Display for IntentConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conflicting intent on {} of transaction {}",
            pretty_key(&self.key),
            txn_id_string(&self.txn.txn_id)
        )
    }
}

/// The transaction id as CockroachDB prints one (a UUID).
pub fn txn_id_string(id: &TxnId) -> String {
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

const INTENT_MAGIC: u8 = b'I';
const INTENT_VERSION: u8 = 1;

impl Intent {
    /// The bytes stored as the value of the version at [`INTENT_TS`].
    pub fn encode(&self) -> Vec<u8> {
        let value_len = self.value.as_ref().map_or(0, Vec::len);
        let mut out =
            Vec::with_capacity(2 + 16 + 12 + 4 + self.txn.record_key.len() + 1 + value_len);
        out.push(INTENT_MAGIC);
        out.push(INTENT_VERSION);
        out.extend_from_slice(&self.txn.txn_id);
        out.extend_from_slice(&self.write_ts.to_bytes());
        out.extend_from_slice(&(self.txn.record_key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.txn.record_key);
        match &self.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v);
            }
        }
        out
    }

    /// Decodes an intent's stored value (`header` is the stored version's header).
    pub fn decode(bytes: &[u8], header: ValueHeader) -> std::result::Result<Intent, String> {
        let take = |at: usize, n: usize| -> std::result::Result<&[u8], String> {
            bytes
                .get(at..at + n)
                .ok_or_else(|| format!("intent of {} bytes is truncated", bytes.len()))
        };
        if take(0, 2)? != [INTENT_MAGIC, INTENT_VERSION] {
            return Err("not an intent".into());
        }
        let mut txn_id = [0u8; 16];
        txn_id.copy_from_slice(take(2, 16)?);
        let write_ts = Timestamp::from_bytes(take(18, 12)?).map_err(|e| e.to_string())?;
        let len_bytes: [u8; 4] = take(30, 4)?.try_into().expect("4 bytes");
        let record_len = u32::from_be_bytes(len_bytes) as usize;
        let record_key = take(34, record_len)?.to_vec();
        let at = 34 + record_len;
        let value = match take(at, 1)?[0] {
            0 if bytes.len() == at + 1 => None,
            1 => Some(bytes[at + 1..].to_vec()),
            _ => return Err("intent with a malformed value marker".into()),
        };
        Ok(Intent {
            txn: TxnMeta { txn_id, record_key },
            write_ts,
            header,
            value,
        })
    }

    /// The intent from a stored version at [`INTENT_TS`].
    pub(crate) fn from_version(key: &[u8], version: &Version) -> Result<Intent> {
        let bytes = version.value.as_deref().ok_or_else(|| {
            corruption(key, encoding::DecodeError("intent without a value".into()))
        })?;
        Intent::decode(bytes, version.header).map_err(|e| corruption(key, encoding::DecodeError(e)))
    }

    pub fn conflict(&self, key: &[u8]) -> IntentConflict {
        IntentConflict {
            key: key.to_vec(),
            txn: self.txn.clone(),
            write_ts: self.write_ts,
            value: self.value.clone(),
        }
    }
}

/// How a transaction's intents end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Committed at this timestamp: the intent's value becomes a version there.
    Commit(Timestamp),
    /// Aborted: the intent disappears.
    Abort,
    /// Still pending, but pushed to commit at or above this timestamp (a reader pushed it
    /// above its read): the intent stays, moved up to it, so reads below it pass it.
    Push(Timestamp),
}

impl Engine {
    /// Evaluates `rows` as intents of `txn`, at or above `provisional`: decides every row as
    /// [`Engine::evaluate`] does, against the key's newest committed version (an intent of
    /// `txn` itself, from a retried request, is replaced). Another transaction's intent on any
    /// key fails the whole evaluation with [`StorageError::WriteIntent`]. The returned
    /// `ts` is the intents' write timestamp.
    pub fn evaluate_intents(
        &self,
        rows: &[RowWrite],
        atomic: bool,
        provisional: Timestamp,
        txn: &TxnMeta,
    ) -> Result<Evaluation> {
        duplicate_key_check(rows.iter().flat_map(|r| {
            std::iter::once(r.key.as_slice()).chain(r.dependents.iter().map(|(k, _)| k.as_slice()))
        }))?;
        let plan = self.plan_writes(rows, atomic, provisional, None, Some(txn))?;
        Ok(Evaluation {
            ts: plan.commit_ts.unwrap_or(provisional),
            outcomes: plan.outcomes,
            writes: plan.writes.into_iter().map(|w| w.write).collect(),
        })
    }

    /// The versions that resolve `txn_id`'s intents on `keys`: for each key that holds one, its
    /// removal and, for a commit, its value at the commit timestamp; for a push, the intent
    /// rewritten at the pushed write timestamp (when that is higher). Keys without an intent
    /// of this transaction yield nothing (resolution is idempotent).
    pub fn evaluate_resolve(
        &self,
        keys: &[Vec<u8>],
        txn_id: &TxnId,
        resolution: Resolution,
    ) -> Result<Vec<VersionWrite>> {
        let mut it = self.point_iterator(None);
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        for key in keys {
            prefix.clear();
            encoding::encode_prefix_into(key, &mut prefix);
            let (newest, intent) = read_key(&mut it, &prefix, key, INTENT_TS)?;
            let Some(intent) = intent else { continue };
            if intent.txn.txn_id != *txn_id {
                continue;
            }
            if let Resolution::Push(pushed_ts) = resolution {
                if intent.write_ts < pushed_ts {
                    let header = intent.header;
                    let moved = Intent {
                        write_ts: pushed_ts,
                        ..intent
                    };
                    out.push(VersionWrite {
                        key: key.clone(),
                        version: Version {
                            ts: INTENT_TS,
                            header,
                            value: Some(moved.encode()),
                        },
                    });
                }
                continue;
            }
            out.push(VersionWrite {
                key: key.clone(),
                version: Version {
                    ts: INTENT_TS,
                    header: ValueHeader::default(),
                    value: None,
                },
            });
            if let Resolution::Commit(commit_ts) = resolution {
                if let Some(newest) = newest
                    && newest.ts >= commit_ts
                {
                    return Err(StorageError::InvalidArgument(format!(
                        "commit of {} at {commit_ts} is not above its newest version at {}",
                        pretty_key(key),
                        newest.ts
                    )));
                }
                out.push(VersionWrite {
                    key: key.clone(),
                    version: Version {
                        ts: commit_ts,
                        header: intent.header,
                        value: intent.value,
                    },
                });
            }
        }
        Ok(out)
    }

    /// Resolves `txn_id`'s intents on `keys` in one batch, holding their latches (ranges that
    /// are not replicated; a replicated range proposes [`Engine::evaluate_resolve`]'s
    /// versions instead). Returns how many intents were resolved.
    pub fn apply_resolve(
        &self,
        keys: &[Vec<u8>],
        txn_id: &TxnId,
        resolution: Resolution,
    ) -> Result<usize> {
        let _latches = self.latches.acquire(keys.iter().map(Vec::as_slice));
        let writes = self.evaluate_resolve(keys, txn_id, resolution)?;
        let resolved = writes.iter().filter(|w| w.version.ts == INTENT_TS).count();
        if !writes.is_empty() {
            self.commit_versions(&writes, &[])?;
        }
        Ok(resolved)
    }

    /// Every intent in `span`, in key order, at most `limit` (0 = no limit).
    pub fn scan_intents(
        &self,
        span: &ldr_types::Span,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Intent)>> {
        let mut out = Vec::new();
        self.scan_versions(span, &mut |w| {
            if w.version.ts == INTENT_TS
                && let Ok(intent) = Intent::from_version(&w.key, &w.version)
            {
                out.push((w.key, intent));
            }
            limit == 0 || out.len() < limit
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ldr_types::{Clock, Span};
    use parking_lot::Mutex;

    use super::*;
    use crate::{CommitEvent, CommitObserver, Condition, EngineOptions, RowOutcome};

    #[derive(Default)]
    struct Events(Mutex<Vec<CommitEvent>>);

    impl CommitObserver for Events {
        fn on_commit(&self, events: &[CommitEvent]) {
            self.0.lock().extend_from_slice(events);
        }
    }

    fn engine() -> (Arc<Engine>, Arc<Events>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("ok");
        let e = Engine::open(
            dir.path(),
            Arc::new(Clock::default()),
            EngineOptions::default(),
        )
        .expect("ok");
        let events = Arc::new(Events::default());
        e.set_observer(events.clone());
        (e, events, dir)
    }

    fn put(key: &[u8], value: &[u8], condition: Condition) -> RowWrite {
        RowWrite {
            key: key.to_vec(),
            value: Some(value.to_vec()),
            condition,
            header: ValueHeader::default(),
            dependents: vec![(b"dep".to_vec(), Some(b"d".to_vec()))],
        }
    }

    fn is_intent_conflict(r: &Result<impl std::fmt::Debug>, txn: &TxnMeta) -> bool {
        matches!(r, Err(StorageError::WriteIntent(c)) if c.txn == *txn)
    }

    #[test]
    fn intents_block_readers_and_writers_until_resolved_and_commit_at_the_commit_ts() {
        let (e, events, _dir) = engine();
        e.apply(&[put(b"k", b"old", Condition::None)], true, None)
            .expect("ok");
        events.0.lock().clear();
        let txn = meta();
        let written = e
            .apply_txn(
                &[put(b"k", b"new", Condition::Expect(Some(b"old".to_vec())))],
                true,
                None,
                Some(&txn),
            )
            .expect("ok");
        assert!(matches!(written.outcomes[0], RowOutcome::Written { .. }));
        let write_ts = written.ts;
        assert!(events.0.lock().is_empty(), "an intent is not a commit");

        // Readers at or above the write timestamp meet it; below, they read past it.
        assert!(is_intent_conflict(&e.get(b"k", Timestamp::MAX), &txn));
        assert!(is_intent_conflict(&e.get(b"dep", write_ts), &txn));
        assert!(is_intent_conflict(
            &e.get_many([b"x".as_slice(), b"k"], write_ts),
            &txn
        ));
        let span = Span::new(b"a".to_vec(), b"z".to_vec());
        assert!(is_intent_conflict(&e.scan(&span, write_ts, 0), &txn));
        let below = write_ts.prev();
        assert_eq!(
            e.get(b"k", below)
                .expect("ok")
                .expect("ok")
                .value
                .as_deref(),
            Some(&b"old"[..])
        );
        assert_eq!(e.scan(&span, below, 0).expect("ok").len(), 2);
        assert_eq!(
            e.scan_committed(&span, Timestamp::MAX, 0)
                .expect("ok")
                .len(),
            2
        );
        assert_eq!(
            e.snapshot()
                .get(b"k", Timestamp::MAX)
                .expect("ok")
                .expect("ok")
                .value
                .as_deref(),
            Some(&b"old"[..])
        );
        // History shows no intent.
        let mut history = 0;
        e.scan_history(&span, Timestamp::ZERO, Timestamp::MAX, &mut |_| {
            history += 1;
            true
        })
        .expect("ok");
        assert_eq!(history, 2);

        // Writers meet it (non-transactional, or another transaction).
        assert!(is_intent_conflict(
            &e.apply(&[put(b"k", b"x", Condition::None)], true, None),
            &txn
        ));
        let other = TxnMeta {
            txn_id: [8; 16],
            record_key: b"r2".to_vec(),
        };
        assert!(is_intent_conflict(
            &e.apply_txn(
                &[put(b"k", b"y", Condition::None)],
                true,
                None,
                Some(&other)
            ),
            &txn
        ));
        // The same transaction may write again, deciding against its own intent.
        let again = e
            .apply_txn(
                &[put(b"k", b"new", Condition::Expect(Some(b"old".to_vec())))],
                true,
                None,
                Some(&txn),
            )
            .expect("ok");
        assert!(matches!(
            again.outcomes[0],
            RowOutcome::ConditionFailed { .. }
        ));
        e.apply_txn(
            &[put(b"k", b"new", Condition::Expect(Some(b"new".to_vec())))],
            true,
            None,
            Some(&txn),
        )
        .expect("ok");
        assert_eq!(e.scan_intents(&span, 0).expect("ok").len(), 2);

        // Commit: values at the commit timestamp, events with the previous committed value.
        let commit_ts = Timestamp::new(write_ts.wall_time_ns + 1_000, 0);
        assert_eq!(
            e.apply_resolve(
                &[b"k".to_vec(), b"dep".to_vec()],
                &txn.txn_id,
                Resolution::Commit(commit_ts)
            )
            .expect("ok"),
            2
        );
        let v = e.get(b"k", Timestamp::MAX).expect("ok").expect("ok");
        assert_eq!((v.ts, v.value.as_deref()), (commit_ts, Some(&b"new"[..])));
        assert_eq!(
            e.get(b"k", commit_ts.prev())
                .expect("ok")
                .expect("ok")
                .value
                .as_deref(),
            Some(&b"old"[..])
        );
        let ev = events.0.lock().clone();
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|x| x.version.ts == commit_ts));
        let k = ev.iter().find(|x| x.key == b"k").expect("ok");
        assert_eq!(k.prev_value.as_deref(), Some(&b"old"[..]));
        // Idempotent.
        assert_eq!(
            e.apply_resolve(&[b"k".to_vec()], &txn.txn_id, Resolution::Commit(commit_ts))
                .expect("ok"),
            0
        );
        assert_eq!(events.0.lock().len(), 2);
        assert!(e.scan_intents(&span, 0).expect("ok").is_empty());
        // Writers go on, above the commit.
        let after = e
            .apply(&[put(b"k", b"z", Condition::None)], true, None)
            .expect("ok");
        assert!(after.ts > commit_ts);
    }

    #[test]
    fn aborted_intents_disappear_and_other_transactions_cannot_resolve_them() {
        let (e, events, _dir) = engine();
        let txn = meta();
        e.apply_txn(
            &[put(b"k", b"new", Condition::Expect(None))],
            true,
            None,
            Some(&txn),
        )
        .expect("ok");
        assert_eq!(
            e.apply_resolve(&[b"k".to_vec()], &[1; 16], Resolution::Abort)
                .expect("ok"),
            0
        );
        assert!(is_intent_conflict(&e.get(b"k", Timestamp::MAX), &txn));
        assert_eq!(
            e.apply_resolve(
                &[b"k".to_vec(), b"dep".to_vec()],
                &txn.txn_id,
                Resolution::Abort
            )
            .expect("ok"),
            2
        );
        assert_eq!(e.get(b"k", Timestamp::MAX).expect("ok"), None);
        assert_eq!(e.get(b"dep", Timestamp::MAX).expect("ok"), None);
        assert!(events.0.lock().is_empty());
        // A failed condition writes no intent at all.
        e.apply(&[put(b"k", b"v", Condition::None)], true, None)
            .expect("ok");
        let r = e
            .apply_txn(
                &[put(b"k", b"w", Condition::Expect(None))],
                true,
                None,
                Some(&txn),
            )
            .expect("ok");
        assert!(matches!(r.outcomes[0], RowOutcome::ConditionFailed { .. }));
        assert!(e.get(b"k", Timestamp::MAX).is_ok());
    }

    #[test]
    fn the_closed_timestamp_stays_below_an_unresolved_intent() {
        let (e, _, dir) = engine();
        let txn = meta();
        let w = e
            .apply_txn(&[put(b"k", b"v", Condition::None)], true, None, Some(&txn))
            .expect("intent")
            .ts;
        // Long enough for the closed timestamp to pass the intent if nothing held it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let past = |e: &Engine| {
            e.clock()
                .now()
                .sub_nanos(EngineOptions::default().closed_timestamp_target.as_nanos() as u64)
                > w
        };
        while !past(&e) {
            assert!(std::time::Instant::now() < deadline, "time does not pass");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(e.closed_timestamp() < w, "held below the intent");
        // Also after a restart (the intent is found again on open).
        drop(e);
        let e = Engine::open(
            dir.path(),
            Arc::new(Clock::default()),
            EngineOptions::default(),
        )
        .expect("reopen");
        assert!(
            e.closed_timestamp() < w,
            "held below the intent after a restart"
        );
        e.apply_resolve(
            &[b"k".to_vec(), b"dep".to_vec()],
            &txn.txn_id,
            Resolution::Abort,
        )
        .expect("resolve");
        assert!(e.closed_timestamp() > w, "released once resolved");
    }

    #[test]
    fn intents_travel_in_commands_and_snapshots() {
        let (a, _, _d1) = engine();
        let (b, _, _d2) = engine();
        let txn = meta();
        let eval = a
            .evaluate_intents(
                &[put(b"k", b"v", Condition::None)],
                true,
                a.clock().now(),
                &txn,
            )
            .expect("ok");
        assert!(eval.writes.iter().all(|w| w.version.ts == INTENT_TS));
        b.commit_versions(&eval.writes, &[]).expect("ok");
        assert!(is_intent_conflict(&b.get(b"k", Timestamp::MAX), &txn));
        // The clock is not moved to the intents' storage timestamp.
        assert!(b.clock().now() < Timestamp::new(u64::MAX / 2, 0));
        let commit = b
            .evaluate_resolve(
                &[b"k".to_vec(), b"dep".to_vec()],
                &txn.txn_id,
                Resolution::Commit(eval.ts.next()),
            )
            .expect("ok");
        assert_eq!(commit.len(), 4, "removal and version of each key");
        b.commit_versions(&commit, &[]).expect("ok");
        assert_eq!(
            b.get(b"k", Timestamp::MAX).expect("ok").expect("ok").ts,
            eval.ts.next()
        );
    }

    fn meta() -> TxnMeta {
        TxnMeta {
            txn_id: [7; 16],
            record_key: b"rec\x00key".to_vec(),
        }
    }

    #[test]
    fn intent_round_trips() {
        for value in [None, Some(Vec::new()), Some(b"v\x00\x01".to_vec())] {
            let intent = Intent {
                txn: meta(),
                write_ts: Timestamp::new(42, 3),
                header: ValueHeader {
                    origin_id: 2,
                    origin_ts: Timestamp::new(9, 0),
                    omit_in_rangefeeds: false,
                },
                value,
            };
            let bytes = intent.encode();
            assert_eq!(Intent::decode(&bytes, intent.header).expect("ok"), intent);
        }
    }

    #[test]
    fn malformed_intents_are_refused() {
        let intent = Intent {
            txn: meta(),
            write_ts: Timestamp::new(1, 0),
            header: ValueHeader::default(),
            value: None,
        };
        let bytes = intent.encode();
        for cut in 0..bytes.len() {
            assert!(
                Intent::decode(&bytes[..cut], ValueHeader::default()).is_err(),
                "cut {cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Intent::decode(&trailing, ValueHeader::default()).is_err());
        assert!(Intent::decode(b"xx", ValueHeader::default()).is_err());
    }

    #[test]
    fn txn_ids_print_as_uuids() {
        assert_eq!(
            txn_id_string(&[0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
    }
}
