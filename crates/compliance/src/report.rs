//! Article 14 reports and their clocks.
//!
//! | event | early warning | notification | final report |
//! |---|---|---|---|
//! | actively exploited vulnerability, 14(2) | aware + 24 h | aware + 72 h | 14 days after a corrective or mitigating measure is available |
//! | severe incident, 14(4) | aware + 24 h | aware + 72 h | one month after the notification was submitted |
//!
//! The final-report clocks do not run from awareness. Until a measure is available an exploited
//! vulnerability's final report has no deadline (the report says it is waiting); until the
//! notification of a severe incident is submitted, its final deadline is shown provisionally
//! from the notification's own deadline. A measure that was available before the manufacturer
//! became aware starts the 14 days at awareness, not before.
//!
//! Calendar arithmetic reads periods conservatively (the earlier instant): "one month" ends on
//! the same date and time of the next month, or on the last day of that month at the same time
//! when the date does not exist (31 January → 28 or 29 February); Regulation 1182/71 would let
//! such a period run to the end of that day. Days are 24-hour periods. All times are UTC.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ComplianceError;

/// What is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    ExploitedVulnerability,
    SevereIncident,
}

impl ReportKind {
    pub fn parse(s: &str) -> Result<ReportKind, ComplianceError> {
        match s {
            "exploited-vulnerability" => Ok(ReportKind::ExploitedVulnerability),
            "severe-incident" => Ok(ReportKind::SevereIncident),
            other => Err(ComplianceError::Rule(format!(
                "unknown report kind {other:?} (exploited-vulnerability or severe-incident)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::ExploitedVulnerability => "exploited-vulnerability",
            ReportKind::SevereIncident => "severe-incident",
        }
    }
}

/// The stages of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    EarlyWarning,
    Notification,
    FinalReport,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::EarlyWarning, Stage::Notification, Stage::FinalReport];

    pub fn parse(s: &str) -> Result<Stage, ComplianceError> {
        match s {
            "early-warning" => Ok(Stage::EarlyWarning),
            "notification" => Ok(Stage::Notification),
            "final-report" | "final" => Ok(Stage::FinalReport),
            other => Err(ComplianceError::Rule(format!(
                "unknown stage {other:?} (early-warning, notification, final-report)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::EarlyWarning => "early-warning",
            Stage::Notification => "notification",
            Stage::FinalReport => "final-report",
        }
    }
}

/// A report and what has happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub kind: ReportKind,
    pub product: String,
    pub title: String,
    #[serde(with = "time::serde::rfc3339")]
    pub aware_at: OffsetDateTime,
    /// The vulnerability (CVE or other id) for an exploited vulnerability.
    pub vulnerability: Option<String>,
    /// When the incident occurred, if known.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub occurred_at: Option<OffsetDateTime>,
    /// When a corrective or mitigating measure became available.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub measure_available_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub early_warning_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub notification_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub final_report_at: Option<OffsetDateTime>,
}

impl Report {
    pub fn submitted(&self, stage: Stage) -> Option<OffsetDateTime> {
        match stage {
            Stage::EarlyWarning => self.early_warning_at,
            Stage::Notification => self.notification_at,
            Stage::FinalReport => self.final_report_at,
        }
    }

    /// Records a stage's submission. Stages are submitted in order, and not before awareness.
    pub fn submit(&mut self, stage: Stage, at: OffsetDateTime) -> Result<(), ComplianceError> {
        if at < self.aware_at {
            return Err(ComplianceError::Rule(format!(
                "{} cannot be submitted before awareness ({})",
                stage.as_str(),
                rfc3339(self.aware_at)
            )));
        }
        if self.submitted(stage).is_some() {
            return Err(ComplianceError::Rule(format!(
                "{} of {} was already submitted; the history is append-only",
                stage.as_str(),
                self.id
            )));
        }
        for earlier in Stage::ALL.iter().filter(|s| **s < stage) {
            if self.submitted(*earlier).is_none() {
                return Err(ComplianceError::Rule(format!(
                    "submit the {} before the {}",
                    earlier.as_str(),
                    stage.as_str()
                )));
            }
        }
        if stage == Stage::FinalReport
            && self.kind == ReportKind::ExploitedVulnerability
            && self.measure_available_at.is_none()
        {
            return Err(ComplianceError::Rule(
                "the final report of an exploited vulnerability describes the security update: \
                 record when the corrective measure became available first (`rampart cra report measure`)"
                    .into(),
            ));
        }
        match stage {
            Stage::EarlyWarning => self.early_warning_at = Some(at),
            Stage::Notification => self.notification_at = Some(at),
            Stage::FinalReport => self.final_report_at = Some(at),
        }
        Ok(())
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Not submitted; the deadline is ahead.
    Open,
    /// Not submitted; the deadline is within the warning window.
    DueSoon,
    /// Not submitted; the deadline has passed.
    Overdue,
    /// Submitted by its deadline.
    Submitted,
    /// Submitted after its deadline.
    SubmittedLate,
    /// No deadline yet (a final report waiting for a corrective measure).
    Waiting,
}

/// One stage's deadline.
#[derive(Debug, Clone, Serialize)]
pub struct Deadline {
    pub stage: Stage,
    #[serde(with = "time::serde::rfc3339::option")]
    pub due: Option<OffsetDateTime>,
    /// Whether `due` may still move (computed from a deadline, not a submission).
    pub provisional: bool,
    /// What the deadline is counted from, in words.
    pub basis: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub submitted_at: Option<OffsetDateTime>,
    pub state: State,
}

/// Adds one calendar month, clamping to the last day of the month.
pub fn add_month(t: OffsetDateTime) -> OffsetDateTime {
    let (y, m) = if t.month() == time::Month::December {
        (t.year() + 1, time::Month::January)
    } else {
        (t.year(), t.month().next())
    };
    let last = time::util::days_in_month(m, y);
    let day = t.day().min(last);
    // Proven invariant: `day` is at most the month's length, so the date exists.
    let date = time::Date::from_calendar_date(y, m, day).unwrap_or(t.date());
    t.replace_date(date)
}

/// The deadlines of a report at `now`; `warn` is how long before a deadline it is "due soon".
pub fn deadlines(r: &Report, now: OffsetDateTime, warn: Duration) -> Vec<Deadline> {
    let state =
        |due: Option<OffsetDateTime>, submitted: Option<OffsetDateTime>| match (due, submitted) {
            (Some(d), Some(s)) if s > d => State::SubmittedLate,
            (_, Some(_)) => State::Submitted,
            (None, None) => State::Waiting,
            (Some(d), None) if now > d => State::Overdue,
            (Some(d), None) if now + warn >= d => State::DueSoon,
            (Some(_), None) => State::Open,
        };
    let mut out = Vec::new();
    let early = r.aware_at + Duration::hours(24);
    out.push(Deadline {
        stage: Stage::EarlyWarning,
        due: Some(early),
        provisional: false,
        basis: "24 hours after becoming aware (Art. 14(2)(a) / 14(4)(a))".into(),
        submitted_at: r.early_warning_at,
        state: state(Some(early), r.early_warning_at),
    });
    let notif = r.aware_at + Duration::hours(72);
    out.push(Deadline {
        stage: Stage::Notification,
        due: Some(notif),
        provisional: false,
        basis: "72 hours after becoming aware (Art. 14(2)(b) / 14(4)(b))".into(),
        submitted_at: r.notification_at,
        state: state(Some(notif), r.notification_at),
    });
    let (due, provisional, basis) = match r.kind {
        ReportKind::ExploitedVulnerability => match r.measure_available_at {
            Some(m) => (
                Some(m.max(r.aware_at) + Duration::days(14)),
                false,
                if m < r.aware_at {
                    "14 days after becoming aware: the corrective measure was already available (Art. 14(2)(c))".to_owned()
                } else {
                    "14 days after the corrective or mitigating measure became available (Art. 14(2)(c))".to_owned()
                },
            ),
            None => (
                None,
                true,
                "14 days after a corrective or mitigating measure is available; none recorded yet (Art. 14(2)(c))".to_owned(),
            ),
        },
        ReportKind::SevereIncident => match r.notification_at {
            Some(n) => (
                Some(add_month(n)),
                false,
                "one month after the incident notification was submitted (Art. 14(4)(c))".to_owned(),
            ),
            None => (
                Some(add_month(notif)),
                true,
                "one month after the incident notification; shown from the notification's deadline until it is submitted (Art. 14(4)(c))".to_owned(),
            ),
        },
    };
    out.push(Deadline {
        stage: Stage::FinalReport,
        due,
        provisional,
        basis,
        submitted_at: r.final_report_at,
        state: state(due, r.final_report_at),
    });
    out
}

/// Formats a time as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Parses RFC 3339 ("2026-11-23T08:00:00Z" or with an offset), converting to UTC.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, ComplianceError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map_err(|e| {
            ComplianceError::Rule(format!(
                "{s:?} is not an RFC 3339 time such as 2026-11-23T08:00:00Z: {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn report(kind: ReportKind, aware: OffsetDateTime) -> Report {
        Report {
            id: "CRA-2026-0001".into(),
            kind,
            product: "p".into(),
            title: "t".into(),
            aware_at: aware,
            vulnerability: None,
            occurred_at: None,
            measure_available_at: None,
            early_warning_at: None,
            notification_at: None,
            final_report_at: None,
        }
    }

    fn due(d: &[Deadline], s: Stage) -> Option<OffsetDateTime> {
        d.iter().find(|x| x.stage == s).and_then(|x| x.due)
    }

    #[test]
    fn early_warning_and_notification_count_from_awareness() {
        let r = report(
            ReportKind::ExploitedVulnerability,
            datetime!(2026-12-31 22:30 UTC),
        );
        let d = deadlines(&r, datetime!(2027-01-01 00:00 UTC), Duration::hours(6));
        assert_eq!(
            due(&d, Stage::EarlyWarning),
            Some(datetime!(2027-01-01 22:30 UTC))
        );
        assert_eq!(
            due(&d, Stage::Notification),
            Some(datetime!(2027-01-03 22:30 UTC))
        );
        assert_eq!(d[0].state, State::Open);
        let d = deadlines(&r, datetime!(2027-01-01 17:00 UTC), Duration::hours(6));
        assert_eq!(d[0].state, State::DueSoon);
        let d = deadlines(&r, datetime!(2027-01-01 22:31 UTC), Duration::hours(6));
        assert_eq!(d[0].state, State::Overdue);
    }

    #[test]
    fn exploited_final_report_counts_from_the_measure_not_awareness() {
        let mut r = report(
            ReportKind::ExploitedVulnerability,
            datetime!(2026-11-02 09:00 UTC),
        );
        let d = deadlines(&r, datetime!(2026-11-03 00:00 UTC), Duration::hours(6));
        assert_eq!(due(&d, Stage::FinalReport), None);
        assert_eq!(d[2].state, State::Waiting);
        r.measure_available_at = Some(datetime!(2026-11-20 15:00 UTC));
        let d = deadlines(&r, datetime!(2026-11-21 00:00 UTC), Duration::hours(6));
        assert_eq!(
            due(&d, Stage::FinalReport),
            Some(datetime!(2026-12-04 15:00 UTC))
        );
        // A fix that existed before awareness: 14 days from awareness.
        r.measure_available_at = Some(datetime!(2026-10-01 00:00 UTC));
        let d = deadlines(&r, datetime!(2026-11-03 00:00 UTC), Duration::hours(6));
        assert_eq!(
            due(&d, Stage::FinalReport),
            Some(datetime!(2026-11-16 09:00 UTC))
        );
    }

    #[test]
    fn severe_incident_final_report_is_a_month_after_the_notification() {
        let mut r = report(ReportKind::SevereIncident, datetime!(2027-01-27 10:00 UTC));
        let d = deadlines(&r, datetime!(2027-01-27 11:00 UTC), Duration::hours(6));
        // Provisional: notification due 2027-01-30 10:00 -> 2027-02-28 10:00 (clamped).
        assert_eq!(
            due(&d, Stage::FinalReport),
            Some(datetime!(2027-02-28 10:00 UTC))
        );
        assert!(d[2].provisional);
        r.submit(Stage::EarlyWarning, datetime!(2027-01-27 20:00 UTC))
            .expect("ok");
        r.submit(Stage::Notification, datetime!(2027-01-29 08:15 UTC))
            .expect("ok");
        let d = deadlines(&r, datetime!(2027-01-29 09:00 UTC), Duration::hours(6));
        assert_eq!(
            due(&d, Stage::FinalReport),
            Some(datetime!(2027-02-28 08:15 UTC))
        );
        assert!(!d[2].provisional);
        assert_eq!(d[1].state, State::Submitted);
    }

    #[test]
    fn month_arithmetic_clamps_and_handles_leap_years() {
        assert_eq!(
            add_month(datetime!(2028-01-31 12:00 UTC)),
            datetime!(2028-02-29 12:00 UTC)
        );
        assert_eq!(
            add_month(datetime!(2027-01-31 12:00 UTC)),
            datetime!(2027-02-28 12:00 UTC)
        );
        assert_eq!(
            add_month(datetime!(2026-12-15 00:00 UTC)),
            datetime!(2027-01-15 00:00 UTC)
        );
        assert_eq!(
            add_month(datetime!(2027-03-31 00:00 UTC)),
            datetime!(2027-04-30 00:00 UTC)
        );
    }

    #[test]
    fn late_submissions_are_marked_and_order_is_enforced() {
        let mut r = report(
            ReportKind::ExploitedVulnerability,
            datetime!(2026-11-01 00:00 UTC),
        );
        assert!(
            r.submit(Stage::Notification, datetime!(2026-11-01 01:00 UTC))
                .is_err()
        );
        assert!(
            r.submit(Stage::EarlyWarning, datetime!(2026-10-31 23:00 UTC))
                .is_err()
        );
        r.submit(Stage::EarlyWarning, datetime!(2026-11-02 01:00 UTC))
            .expect("late but allowed");
        assert!(
            r.submit(Stage::EarlyWarning, datetime!(2026-11-02 02:00 UTC))
                .is_err()
        );
        let d = deadlines(&r, datetime!(2026-11-02 02:00 UTC), Duration::hours(6));
        assert_eq!(d[0].state, State::SubmittedLate);
        r.submit(Stage::Notification, datetime!(2026-11-03 00:00 UTC))
            .expect("ok");
        assert!(
            r.submit(Stage::FinalReport, datetime!(2026-11-04 00:00 UTC))
                .is_err(),
            "final report before a measure"
        );
    }

    #[test]
    fn offsets_convert_to_utc() {
        let t = parse_time("2026-11-23T10:00:00+02:00").expect("valid");
        assert_eq!(t, datetime!(2026-11-23 08:00 UTC));
        assert!(parse_time("yesterday").is_err());
    }
}
