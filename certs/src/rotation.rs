//! When to renew a leaf: at 70 % of its lifetime, minus up to 10 % jitter so a fleet started
//! together does not renew together, and never later than 10 s before expiry.

use std::time::{Duration, SystemTime};

/// Fraction of the lifetime after which a leaf is renewed.
const RENEW_AT: f64 = 0.7;
/// Largest fraction of the lifetime subtracted as jitter.
const MAX_JITTER: f64 = 0.1;
/// Renew at least this long before expiry…
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// …unless that would leave less than this fraction of the lifetime between renewals.
const MIN_FRACTION: f64 = 0.5;

/// How long to wait from `received_at` before renewing a leaf valid until `not_after`.
///
/// `jitter` is a random number in `[0, 1)`. The lifetime counts from receipt, not from notBefore,
/// because leaves are backdated for clock skew.
pub fn renew_after(received_at: SystemTime, not_after: SystemTime, jitter: f64) -> Duration {
    let lifetime = not_after.duration_since(received_at).unwrap_or_default();
    let fraction = RENEW_AT - MAX_JITTER * jitter.clamp(0.0, 1.0);
    let scheduled = lifetime.mul_f64(fraction);
    let latest = lifetime.saturating_sub(EXPIRY_MARGIN);
    // For very short lifetimes the 10 s margin would renew at once, in a loop; there the
    // proportional schedule wins.
    if latest >= lifetime.mul_f64(MIN_FRACTION) {
        scheduled.min(latest)
    } else {
        scheduled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(lifetime_secs: u64, jitter: f64) -> Duration {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        renew_after(now, now + Duration::from_secs(lifetime_secs), jitter)
    }

    #[test]
    fn renews_at_seventy_percent_minus_jitter() {
        assert_eq!(after(86_400, 0.0), Duration::from_secs(60_480));
        assert_eq!(after(86_400, 1.0), Duration::from_secs(51_840));
        let mid = after(86_400, 0.5);
        assert!(mid > Duration::from_secs(51_840) && mid < Duration::from_secs(60_480));
    }

    #[test]
    fn never_later_than_ten_seconds_before_expiry() {
        // 70 % of 30 s is 21 s, but the margin asks for 20 s.
        assert_eq!(after(30, 0.0), Duration::from_secs(20));
    }

    #[test]
    fn short_lifetimes_do_not_renew_in_a_loop() {
        assert_eq!(after(10, 0.0), Duration::from_secs(7));
        assert_eq!(after(0, 0.0), Duration::ZERO);
    }
}
