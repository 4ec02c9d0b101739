//! Checkers: what must hold after (or during) a run.
