//! The last line of defence against a bug: a panic inside one processor (or one SQL
//! connection, in `ldr-server`) is caught at its task's boundary, logged and turned into an
//! error, so the node and everything else it runs keep going. Not a substitute for returning
//! errors: it exists so that a missed case costs one flow or one connection, not a node.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// Runs `fut`; a panic inside it comes back as `Err` with the panic's message.
///
/// Unwind safety is the caller's promise: whatever outlives `fut` (shared counters, channels,
/// clients) must be consistent at every await point, since `fut`'s own state is dropped with
/// the panic.
pub async fn catch_panic<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a caught panic's payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_the_caller_goes_on() {
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
        let key = String::from("k");
        let caught = catch_panic(async {
            tokio::task::yield_now().await;
            panic!("bad key {key}");
        })
        .await;
        assert_eq!(caught, Err::<(), _>("bad key k".to_string()));
        assert_eq!(
            catch_panic(async { std::panic::panic_any(3u8) }).await,
            Err::<(), _>("a panic without a message".to_string())
        );
    }
}
