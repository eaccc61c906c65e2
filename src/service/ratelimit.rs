//! A per-client token bucket: `per_minute` requests a minute, refilled continuously, with a burst of
//! that many. Clients (a token's name, or an address) idle for a minute are forgotten, so memory stays
//! bounded by active clients.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    per_minute: f64,
    clients: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute: per_minute as f64,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`, or says how long until one is there.
    pub fn take(&self, client: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|_, (_, seen)| now.duration_since(*seen) < Duration::from_secs(60));
        let (tokens, seen) = clients.entry(client.to_string()).or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*seen).as_secs_f64() * self.per_minute / 60.0).min(self.per_minute);
        *seen = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) * 60.0 / self.per_minute))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_wait() {
        let limit = RateLimit::new(3);
        let a = "127.0.0.1";
        assert!((0..3).all(|_| limit.take(a).is_ok()));
        let wait = limit.take(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limit.take("127.0.0.2").is_ok(), "clients are counted apart");
    }
}
