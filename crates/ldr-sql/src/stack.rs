//! Stack depth: PostgreSQL's `check_stack_depth()` for the recursive parts of the SQL layer.
//!
//! Binding and evaluating an expression recurse once per tree level. The parser already refuses
//! trees deeper than [`crate::parser::MAX_EXPR_DEPTH`], but how much stack a level takes
//! depends on the build (a debug binder frame is many times a release one) and on how deep the
//! caller already is, so the recursive functions also ask how much stack is left and answer
//! PostgreSQL's `54001 stack depth limit exceeded` before it runs out, instead of overflowing
//! and killing the node.

use crate::error::{Result, SqlError, sqlstate};

/// The stack a recursive step must leave free: more than the deepest chain of frames between
/// two checks (a debug build's binder and evaluator frames are tens of KiB), with margin.
pub const STACK_RESERVE_BYTES: usize = 256 << 10;

/// `54001 stack depth limit exceeded`, as PostgreSQL words it.
pub fn stack_depth_error() -> SqlError {
    SqlError::new(
        sqlstate::STATEMENT_TOO_COMPLEX,
        "stack depth limit exceeded",
    )
    .with_hint("Simplify the statement: its expressions are nested too deeply.")
}

/// Fails with 54001 when less than [`STACK_RESERVE_BYTES`] of the thread's stack are left.
/// Call it at the top of every function that recurses on a tree a user shaped.
pub fn check_stack_depth() -> Result<()> {
    match stacker::remaining_stack() {
        Some(left) if left < STACK_RESERVE_BYTES => Err(stack_depth_error()),
        // Unknown (a platform stacker cannot inspect): rely on the parser's depth limit.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recurse(n: u64) -> Result<u64> {
        check_stack_depth()?;
        // A frame that takes stack, so the limit is reached in a few thousand levels.
        let pad = std::hint::black_box([n; 64]);
        Ok(recurse(n + 1)? + pad[0] - n)
    }

    #[test]
    fn unbounded_recursion_ends_in_54001_not_an_overflow() {
        let err = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| recurse(0).expect_err("runs out of stack"))
            .expect("spawn a thread with a 1 MiB stack")
            .join()
            .expect("the thread did not overflow its stack");
        assert_eq!(err.code(), "54001");
    }
}
