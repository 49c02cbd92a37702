//! Leader election on a `coordination.k8s.io` Lease, the decision part: given
//! the record a replica reads, may it take the lease?
//!
//! As client-go decides it: a replica never compares its clock with the
//! holder's `renewTime`. It remembers when it first saw the current record
//! and counts the lease as expired only once that record has stayed the same
//! for `leaseDurationSeconds` of its own time. Clock skew between replicas
//! cannot hand the lease to two of them.

use std::time::{Duration, Instant};

/// What matters of a Lease record: who holds it, the renewal they last
/// wrote, and how long it is good for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub lease_duration: Duration,
}

/// A record as this replica saw it, and since when it has looked like that.
#[derive(Debug, Clone)]
pub struct ObservedLease {
    record: Record,
    since: Instant,
}

/// What a replica does about a Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, held by us.
    Create,
    /// Ours, free, or expired: write it with us as holder.
    Take,
    /// Someone else holds a live lease: wait.
    Wait,
}

/// Decides on the record read now (`None`: no Lease). `observed` is what this
/// replica saw before and is updated.
pub fn decide(
    record: Option<&Record>,
    me: &str,
    observed: &mut Option<ObservedLease>,
    now: Instant,
) -> Decision {
    let Some(record) = record else {
        return Decision::Create;
    };
    let since = match observed {
        Some(seen) if seen.record == *record => seen.since,
        _ => now,
    };
    *observed = Some(ObservedLease { record: record.clone(), since });
    match record.holder.as_deref() {
        None | Some("") => Decision::Take,
        Some(holder) if holder == me => Decision::Take,
        Some(_) if now.saturating_duration_since(since) >= record.lease_duration => Decision::Take,
        Some(_) => Decision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renew: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            renew_time: Some(renew.into()),
            lease_duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for_until_it_stops_changing() {
        let mut seen = None;
        let t0 = Instant::now();
        assert_eq!(decide(None, "me", &mut seen, t0), Decision::Create);
        assert_eq!(decide(Some(&held_by("other", "r1")), "me", &mut seen, t0), Decision::Wait);
        // Renewed: the clock starts again.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(decide(Some(&held_by("other", "r2")), "me", &mut seen, t1), Decision::Wait);
        let t2 = t1 + Duration::from_secs(14);
        assert_eq!(decide(Some(&held_by("other", "r2")), "me", &mut seen, t2), Decision::Wait);
        // Unchanged for the lease duration on our own clock: expired.
        let t3 = t1 + Duration::from_secs(15);
        assert_eq!(decide(Some(&held_by("other", "r2")), "me", &mut seen, t3), Decision::Take);
    }

    #[test]
    fn our_own_or_a_released_lease_is_taken_at_once() {
        let mut seen = None;
        let now = Instant::now();
        assert_eq!(decide(Some(&held_by("me", "r1")), "me", &mut seen, now), Decision::Take);
        let released = Record { holder: None, ..held_by("x", "r1") };
        assert_eq!(decide(Some(&released), "me", &mut seen, now), Decision::Take);
    }
}
