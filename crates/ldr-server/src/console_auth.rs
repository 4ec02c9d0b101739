//! DB Console logins of a secure cluster: a user and password checked as a SQL password
//! login is (the same stored SCRAM verifier, `LOGIN` required), then a session cookie.
//!
//! Sessions live in this node's memory (a restart logs everyone out, as does another node:
//! each node is its own console), expire after [`SESSION_TTL`], and are bounded in number.
//! The cookie is random (256 bits), `HttpOnly` and `SameSite=Strict`; it carries no data.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "ldr_session";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest goes first beyond).
pub const SESSIONS_MAX: usize = 10_000;

#[derive(Debug)]
struct Session {
    user: String,
    expires: Instant,
}

/// The node's console sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `user`: its token.
    pub fn create(&self, user: &str, now: Instant) -> String {
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut map = self.map.lock();
        map.retain(|_, s| s.expires > now);
        if let Some(oldest) = (map.len() >= SESSIONS_MAX)
            .then(|| {
                map.iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            })
            .flatten()
        {
            map.remove(&oldest);
        }
        map.insert(
            token.clone(),
            Session {
                user: user.to_string(),
                expires: now + SESSION_TTL,
            },
        );
        token
    }

    /// The user of a live session.
    pub fn user(&self, token: &str, now: Instant) -> Option<String> {
        let mut map = self.map.lock();
        match map.get(token) {
            Some(s) if s.expires > now => Some(s.user.clone()),
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, token: &str) {
        self.map.lock().remove(token);
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session token in a `Cookie` header.
pub fn token_from_cookie(header: &str) -> Option<&str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE && !v.is_empty()).then_some(v)
    })
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Where to go after logging in: only a path on this node (no open redirect).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_random() {
        let s = Sessions::default();
        let now = Instant::now();
        let a = s.create("alice", now);
        let b = s.create("alice", now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(s.user(&a, now).as_deref(), Some("alice"));
        assert_eq!(s.user("nope", now), None);
        assert_eq!(s.user(&a, now + SESSION_TTL + Duration::from_secs(1)), None);
        s.remove(&b);
        assert_eq!(s.user(&b, now), None);
    }

    #[test]
    fn cookies_and_redirects() {
        assert_eq!(token_from_cookie("a=1; ldr_session=xyz; b=2"), Some("xyz"));
        assert_eq!(token_from_cookie("ldr_session="), None);
        assert!(set_cookie("t").contains("HttpOnly"));
        assert_eq!(safe_next(Some("/console/jobs")), "/console/jobs");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
