//! When a failing DBQR tries again.

use std::time::Duration;

use rand::Rng;

/// 1s, 2s, 4s ... after the first, second, third failure, capped at `cap`,
/// with ±20% jitter so DBQRs sharing a failing database do not retry in
/// lockstep.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(10)).min(cap);
    let factor = rand::rng().random_range(0.8..1.2);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter() {
        let cap = Duration::from_secs(30);
        for (failures, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (40, 30.0)] {
            let delay = backoff(failures, cap).as_secs_f64();
            assert!((base * 0.8..=base * 1.2).contains(&delay), "{failures} failures: {delay}s");
        }
    }
}
