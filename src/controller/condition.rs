//! Conditions: what a condition should say (a [`Verdict`], its status
//! typed), the condition that says it (its transition time kept while the
//! status holds), and whether a change of reason is worth an Event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::kube_api::NewEvent;

/// A condition's status, as Kubernetes spells it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }

    /// The status of a condition read back from the API server.
    pub fn of(condition: &Condition) -> Self {
        match condition.status.as_str() {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }
}

impl From<bool> for Status {
    fn from(holds: bool) -> Self {
        if holds {
            Self::True
        } else {
            Self::False
        }
    }
}

/// What a condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    /// A stable reason (README, "Reasons").
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn new(status: Status, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: truncate(message.into()) }
    }

    /// `Ready`, True.
    pub fn ready(message: impl Into<String>) -> Self {
        Self::new(Status::True, crate::reason::READY, message)
    }

    /// A failure: False with its reason.
    pub fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Status::False, reason, message)
    }

    pub fn holds(&self) -> bool {
        self.status == Status::True
    }
}

/// Condition messages stay short: the first problems, not all of them (a
/// server's error can be long).
pub fn truncate(mut message: String) -> String {
    const LIMIT: usize = 1000;
    if message.len() > LIMIT {
        let mut cut = LIMIT;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The condition `type_` saying `verdict`; `before` (the same condition as
/// it was) keeps its transition time while the status holds.
pub fn condition(
    before: Option<&Condition>,
    type_: &str,
    verdict: &Verdict,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let transition = match before {
        Some(c) if Status::of(c) == verdict.status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.to_owned(),
        status: verdict.status.as_str().to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message.clone(),
        last_transition_time: transition,
        observed_generation: generation,
    }
}

/// The Event announcing `verdict`, when its reason differs from `before`'s:
/// a reason is announced once, with the status change, not every pass.
/// `bad` is the status that makes it a warning (False for most conditions).
pub fn event_on_new_reason(
    before: Option<&Condition>,
    verdict: &Verdict,
    bad: Status,
    message: String,
) -> Option<NewEvent> {
    (before.map(|c| c.reason.as_str()) != Some(verdict.reason)).then(|| NewEvent {
        warning: verdict.status == bad,
        reason: verdict.reason,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn the_transition_time_is_kept_while_the_status_holds() {
        let first = condition(None, "Ready", &Verdict::failed("A", "a"), Some(1), &time(1));
        assert_eq!(first.status, "False");
        let same = condition(Some(&first), "Ready", &Verdict::failed("B", "b"), Some(1), &time(2));
        assert_eq!(same.last_transition_time, time(1), "False to False");
        let flipped = condition(Some(&same), "Ready", &Verdict::ready("ok"), Some(2), &time(3));
        assert_eq!(
            (flipped.status.as_str(), flipped.last_transition_time.clone()),
            ("True", time(3))
        );
        assert_eq!(Status::of(&flipped), Status::True);
    }

    #[test]
    fn an_event_only_for_a_new_reason() {
        let before = condition(None, "Ready", &Verdict::failed("A", "a"), None, &time(1));
        let again = Verdict::failed("A", "other words");
        assert_eq!(event_on_new_reason(Some(&before), &again, Status::False, String::new()), None);
        let event = event_on_new_reason(
            Some(&before),
            &Verdict::failed("B", "b"),
            Status::False,
            "b".into(),
        )
        .unwrap();
        assert!(event.warning && event.reason == "B");
        let good = event_on_new_reason(None, &Verdict::ready("ok"), Status::False, "ok".into());
        assert!(!good.unwrap().warning);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let message = "é".repeat(800);
        let cut = Verdict::failed("X", message).message;
        assert!(cut.ends_with("...") && cut.len() <= 1003);
    }
}
