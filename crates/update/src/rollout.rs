//! Staged rollouts: the plan an operator chooses, the states a rollout and its devices go
//! through, the verdict on a wave, and the instruction the hub sends a device.
//!
//! A rollout installs one signed target on a set of devices, wave by wave. Waves have a
//! fixed size or grow exponentially (2, 4, 8, …), and are fixed when the rollout is created,
//! so `rampart rollout status` can always say which devices come next. After each report
//! the hub judges the wave in progress:
//!
//! - more failures than `failure_pct` of the wave (minus failures an operator accepted with
//!   `resume`) → the rollout **pauses** at once, before more devices are touched;
//! - `success_pct` of the wave succeeded → the wave is **done**: the next wave starts, or
//!   waits for `rampart rollout approve` when the plan asks for manual approval;
//! - every device of the wave has finished but too few succeeded → it **pauses**;
//! - otherwise it waits for more reports.
//!
//! An abort sends a rollback instruction to every device the rollout reached.
//!
//! The hub stores all of this as text (`rampart-store` knows nothing of rollouts' rules);
//! the types here are what the text means, and every parse fails closed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Topic suffix (under `devices/{id}`) of the hub's update instructions to a device.
pub const COMMAND_SUFFIX: &str = "/update/command";

/// Largest rollout the hub accepts in one go (bounds the work of one evaluation).
pub const MAX_DEVICES: usize = 100_000;

/// How devices are split into waves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waves {
    /// Every wave has `size` devices (the last may have fewer).
    Fixed { size: u32 },
    /// The first wave has `first` devices, each next one `factor` times more (rounded up).
    Exponential { first: u32, factor: f64 },
}

impl FromStr for Waves {
    type Err = String;
    /// `fixed:SIZE` or `exponential:FIRST:FACTOR`.
    fn from_str(s: &str) -> Result<Waves, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let int = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| format!("{p:?} is not a whole number of devices"))
        };
        let waves = match parts.as_slice() {
            ["fixed", size] => Waves::Fixed { size: int(size)? },
            ["exponential", first, factor] => Waves::Exponential {
                first: int(first)?,
                factor: factor
                    .parse()
                    .map_err(|_| format!("{factor:?} is not a number"))?,
            },
            _ => {
                return Err(format!(
                    "{s:?}: waves are `fixed:SIZE` (e.g. fixed:10) or `exponential:FIRST:FACTOR` \
                     (e.g. exponential:2:2 for 2, 4, 8, ...)"
                ));
            }
        };
        waves.validate()?;
        Ok(waves)
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waves::Fixed { size } => write!(f, "fixed:{size}"),
            Waves::Exponential { first, factor } => write!(f, "exponential:{first}:{factor}"),
        }
    }
}

impl Waves {
    fn validate(&self) -> Result<(), String> {
        match *self {
            Waves::Fixed { size: 0 } | Waves::Exponential { first: 0, .. } => {
                Err("a wave needs at least one device".into())
            }
            Waves::Exponential { factor, .. } if !(1.0..=100.0).contains(&factor) => Err(format!(
                "the growth factor must be between 1 and 100, not {factor}"
            )),
            _ => Ok(()),
        }
    }

    /// The sizes of the waves for `n` devices (their sum is `n`).
    pub fn sizes(&self, n: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = n;
        let mut next = match *self {
            Waves::Fixed { size } => size as usize,
            Waves::Exponential { first, .. } => first as usize,
        };
        while left > 0 {
            let take = next.clamp(1, left);
            sizes.push(take);
            left -= take;
            if let Waves::Exponential { factor, .. } = *self {
                // Bounded by `n`, so the float never grows without limit.
                next = ((next as f64) * factor).ceil().min(n as f64) as usize;
            }
        }
        sizes
    }

    /// The wave of each of `n` devices, in order.
    pub fn assign(&self, n: usize) -> Vec<u32> {
        self.sizes(n)
            .iter()
            .enumerate()
            .flat_map(|(w, &size)| std::iter::repeat_n(u32::try_from(w).unwrap_or(u32::MAX), size))
            .collect()
    }
}

/// Whether the next wave starts by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    Automatic,
    /// `rampart rollout approve ID` between waves.
    Manual,
}

/// What an operator chose for a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub waves: Waves,
    /// Percentage of a wave that must succeed before the next starts (1–100).
    pub success_pct: u8,
    /// Percentage of a wave allowed to fail; one more failure pauses the rollout (0–99).
    pub failure_pct: u8,
    pub approval: Approval,
}

impl Plan {
    /// Checks the numbers: an invalid plan is refused before anything is stored.
    pub fn validate(&self) -> Result<(), String> {
        self.waves.validate()?;
        if !(1..=100).contains(&self.success_pct) {
            return Err(format!(
                "the success threshold is a percentage from 1 to 100, not {}",
                self.success_pct
            ));
        }
        if self.failure_pct > 99 {
            return Err(format!(
                "the failure threshold is a percentage from 0 to 99, not {}",
                self.failure_pct
            ));
        }
        if u32::from(self.success_pct) + u32::from(self.failure_pct) > 100 {
            // Failures the plan allows would make its success threshold unreachable: a
            // contradiction the operator should resolve, not discover mid-rollout.
            return Err(format!(
                "a {}% success threshold leaves no room for the {}% of failures allowed; lower \
                 the success threshold or set the failure threshold to 0",
                self.success_pct, self.failure_pct
            ));
        }
        Ok(())
    }

    /// Reads a stored plan.
    pub fn parse(text: &str) -> Result<Plan, String> {
        let plan: Plan = serde_json::from_str(text).map_err(|e| format!("rollout plan: {e}"))?;
        plan.validate()?;
        Ok(plan)
    }
}

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    other => Err(format!(concat!("unknown ", stringify!($name), " {:?}"), other)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Where a rollout is.
    RolloutState {
        Running = "running",
        /// A wave is done; the next waits for `rampart rollout approve`.
        AwaitingApproval = "awaiting_approval",
        /// Stopped by the failure threshold or an operator; `resume` continues.
        Paused = "paused",
        /// Stopped for good; devices it reached were told to roll back.
        Aborted = "aborted",
        Completed = "completed",
    }
);

text_enum!(
    /// Where one device of a rollout is.
    DeviceState {
        /// In a wave that has not started.
        Pending = "pending",
        /// Sent the install instruction; no report yet.
        Queued = "queued",
        Downloading = "downloading",
        Installing = "installing",
        Verifying = "verifying",
        Succeeded = "succeeded",
        Failed = "failed",
        RolledBack = "rolled_back",
        /// Its wave never started (the rollout was aborted).
        Cancelled = "cancelled",
    }
);

impl DeviceState {
    /// The device has finished with this install, one way or the other.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeviceState::Succeeded
                | DeviceState::Failed
                | DeviceState::RolledBack
                | DeviceState::Cancelled
        )
    }

    /// The install did not stay (refused, failed, or rolled back by its health check).
    pub fn is_failure(self) -> bool {
        matches!(self, DeviceState::Failed | DeviceState::RolledBack)
    }

    /// The rollout reached the device (an abort must tell it to roll back).
    pub fn was_reached(self) -> bool {
        !matches!(
            self,
            DeviceState::Pending
                | DeviceState::Cancelled
                | DeviceState::Failed
                | DeviceState::RolledBack
        )
    }
}

/// Counts of one wave's devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub size: usize,
    pub pending: usize,
    pub in_progress: usize,
    pub succeeded: usize,
    pub failed: usize,
}

impl Tally {
    pub fn of(states: impl IntoIterator<Item = DeviceState>) -> Tally {
        let mut t = Tally::default();
        for s in states {
            t.size += 1;
            match s {
                DeviceState::Pending => t.pending += 1,
                DeviceState::Succeeded => t.succeeded += 1,
                s if s.is_failure() => t.failed += 1,
                DeviceState::Cancelled => {}
                _ => t.in_progress += 1,
            }
        }
        t
    }
}

/// The judgement on the wave in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Waiting for reports.
    Waiting,
    /// The wave met its success threshold.
    Done,
    /// Stop here; the reason is shown to the operator.
    Pause(String),
}

/// Judges a wave from its tally; `accepted` failures were waved through by an operator.
pub fn judge(plan: &Plan, t: &Tally, accepted: usize) -> Verdict {
    if t.size == 0 {
        return Verdict::Done;
    }
    let counted = t.failed.saturating_sub(accepted);
    // Integer percentages: `counted / size > failure_pct / 100`.
    if counted * 100 > usize::from(plan.failure_pct) * t.size {
        return Verdict::Pause(format!(
            "{} of {} devices in the wave failed, more than the {}% allowed",
            t.failed, t.size, plan.failure_pct
        ));
    }
    if t.succeeded * 100 >= usize::from(plan.success_pct) * t.size {
        return Verdict::Done;
    }
    if t.pending == 0 && t.in_progress == 0 {
        return Verdict::Pause(format!(
            "the wave finished with {} of {} devices updated, below the {}% required",
            t.succeeded, t.size, plan.success_pct
        ));
    }
    Verdict::Waiting
}

/// What the hub asks of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Install `target` (checked like any update: signatures, hardware, no downgrade).
    Install,
    /// Return to the version that was committed before this rollout's.
    Rollback,
}

/// An instruction on `devices/{id}/update/command` (retained, so a device that was offline
/// gets the latest one when it connects; the `id` makes a repeat harmless).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub v: u32,
    /// Unique per instruction: `ROLLOUT/install` or `ROLLOUT/rollback`.
    pub id: String,
    pub action: Action,
    pub rollout: String,
    /// The target to install (install only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Command {
    pub fn install(rollout: &str, target: &str) -> Command {
        Command {
            v: 1,
            id: format!("{rollout}/install"),
            action: Action::Install,
            rollout: rollout.to_owned(),
            target: Some(target.to_owned()),
        }
    }

    pub fn rollback(rollout: &str) -> Command {
        Command {
            v: 1,
            id: format!("{rollout}/rollback"),
            action: Action::Rollback,
            rollout: rollout.to_owned(),
            target: None,
        }
    }

    /// Reads an instruction, failing closed on anything unexpected.
    pub fn parse(bytes: &[u8]) -> Result<Command, String> {
        let c: Command =
            serde_json::from_slice(bytes).map_err(|e| format!("update command: {e}"))?;
        if c.v != 1 {
            return Err(format!(
                "update command: version {} (this agent reads 1)",
                c.v
            ));
        }
        if !valid_id(&c.rollout) {
            return Err(format!("update command: bad rollout id {:?}", c.rollout));
        }
        match (c.action, &c.target) {
            (Action::Install, None) => Err("update command: install without a target".into()),
            (Action::Rollback, Some(_)) => Err("update command: rollback with a target".into()),
            _ => Ok(c),
        }
    }
}

/// Rollout ids: 1–64 of `A-Z a-z 0-9 . _ -` (they appear in topics, paths and logs).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan(waves: &str, success: u8, failure: u8) -> Plan {
        let p = Plan {
            waves: waves.parse().unwrap(),
            success_pct: success,
            failure_pct: failure,
            approval: Approval::Automatic,
        };
        p.validate().unwrap();
        p
    }

    #[test]
    fn waves_split_devices_fixed_and_exponentially() {
        let fixed: Waves = "fixed:5".parse().unwrap();
        assert_eq!(fixed.sizes(12), vec![5, 5, 2]);
        assert_eq!(fixed.sizes(0), Vec::<usize>::new());
        let exp: Waves = "exponential:2:2".parse().unwrap();
        assert_eq!(exp.sizes(20), vec![2, 4, 8, 6]);
        assert_eq!(exp.assign(7), vec![0, 0, 1, 1, 1, 1, 2]);
        let slow: Waves = "exponential:1:1.5".parse().unwrap();
        assert_eq!(slow.sizes(10), vec![1, 2, 3, 4]);
        // A factor of 1 is a fixed size; huge counts stay bounded.
        let one: Waves = "exponential:3:1".parse().unwrap();
        assert_eq!(one.sizes(7), vec![3, 3, 1]);
        let big: Waves = "exponential:1:100".parse().unwrap();
        assert_eq!(big.sizes(MAX_DEVICES).iter().sum::<usize>(), MAX_DEVICES);
    }

    #[test]
    fn bad_waves_and_plans_are_refused_with_the_reason() {
        for (s, why) in [
            ("fixed:0", "at least one device"),
            ("fixed:-1", "whole number"),
            ("exponential:2:0.5", "between 1 and 100"),
            ("exponential:2:NaN", "between 1 and 100"),
            ("exponential:2", "fixed:SIZE"),
            ("linear:3", "fixed:SIZE"),
        ] {
            let e = s.parse::<Waves>().unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
        let mut p = plan("fixed:5", 80, 20);
        p.success_pct = 0;
        assert!(p.validate().unwrap_err().contains("1 to 100"));
        p.success_pct = 100;
        p.failure_pct = 10;
        assert!(p.validate().unwrap_err().contains("no room"));
        p.failure_pct = 100;
        assert!(p.validate().unwrap_err().contains("0 to 99"));
        assert!(Plan::parse("{\"waves\":{\"fixed\":{\"size\":1}}}").is_err());
        assert!(Plan::parse("{").is_err());
    }

    #[test]
    fn a_plan_round_trips_through_its_stored_text() {
        let p = plan("exponential:2:2", 75, 25);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(Plan::parse(&text).unwrap(), p);
    }

    #[test]
    fn the_failure_threshold_pauses_as_soon_as_it_is_crossed() {
        use DeviceState::*;
        let p = plan("fixed:8", 75, 25);
        // 2 of 8 failed = 25 %: not more than allowed, still waiting.
        let t = Tally::of([
            Failed,
            RolledBack,
            Queued,
            Queued,
            Succeeded,
            Succeeded,
            Downloading,
            Verifying,
        ]);
        assert_eq!(judge(&p, &t, 0), Verdict::Waiting);
        // The third failure crosses it, whatever the others do.
        let t = Tally::of([
            Failed,
            RolledBack,
            Failed,
            Queued,
            Succeeded,
            Succeeded,
            Downloading,
            Verifying,
        ]);
        match judge(&p, &t, 0) {
            Verdict::Pause(why) => assert!(why.contains("3 of 8"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Failures an operator accepted do not count again.
        assert_eq!(judge(&p, &t, 3), Verdict::Waiting);
    }

    #[test]
    fn a_wave_is_done_at_its_success_threshold_or_pauses_when_it_ends_below() {
        use DeviceState::*;
        let p = plan("fixed:4", 75, 25);
        assert_eq!(
            judge(&p, &Tally::of([Succeeded, Succeeded, Succeeded, Queued]), 0),
            Verdict::Done
        );
        assert_eq!(
            judge(&p, &Tally::of([Succeeded, Succeeded, Failed, Queued]), 0),
            Verdict::Waiting
        );
        let strict = plan("fixed:4", 100, 0);
        assert!(matches!(
            judge(&strict, &Tally::of([Succeeded, Failed]), 0),
            Verdict::Pause(_)
        ));
        let lenient = plan("fixed:4", 50, 49);
        match judge(
            &lenient,
            &Tally::of([Succeeded, Failed, Cancelled, Cancelled]),
            1,
        ) {
            Verdict::Pause(why) => assert!(why.contains("below the 50%"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(judge(&p, &Tally::of([]), 0), Verdict::Done);
    }

    #[test]
    fn states_read_back_and_unknown_ones_are_refused() {
        for s in [
            "pending",
            "queued",
            "downloading",
            "installing",
            "verifying",
            "succeeded",
            "failed",
            "rolled_back",
            "cancelled",
        ] {
            assert_eq!(s.parse::<DeviceState>().unwrap().as_str(), s);
        }
        for s in [
            "running",
            "awaiting_approval",
            "paused",
            "aborted",
            "completed",
        ] {
            assert_eq!(s.parse::<RolloutState>().unwrap().as_str(), s);
        }
        assert!(
            "done"
                .parse::<DeviceState>()
                .unwrap_err()
                .contains("unknown DeviceState")
        );
        assert!(DeviceState::Succeeded.was_reached() && !DeviceState::Failed.was_reached());
    }

    #[test]
    fn commands_round_trip_and_malformed_ones_are_refused() {
        let c = Command::install("r-1", "releases/1.2.0/app.tar");
        let bytes = serde_json::to_vec(&c).unwrap();
        assert_eq!(Command::parse(&bytes).unwrap(), c);
        assert_eq!(
            Command::parse(&serde_json::to_vec(&Command::rollback("r-1")).unwrap())
                .unwrap()
                .action,
            Action::Rollback
        );
        for (bad, why) in [
            (
                r#"{"v":2,"id":"x","action":"rollback","rollout":"r"}"#,
                "version 2",
            ),
            (
                r#"{"v":1,"id":"x","action":"install","rollout":"r"}"#,
                "without a target",
            ),
            (
                r#"{"v":1,"id":"x","action":"rollback","rollout":"r","target":"t"}"#,
                "with a target",
            ),
            (
                r#"{"v":1,"id":"x","action":"reboot","rollout":"r"}"#,
                "unknown variant",
            ),
            (
                r#"{"v":1,"id":"x","action":"rollback","rollout":"../r"}"#,
                "bad rollout id",
            ),
            (
                r#"{"v":1,"id":"x","action":"rollback","rollout":"r","extra":1}"#,
                "unknown field",
            ),
            ("not json", "update command"),
        ] {
            let e = Command::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            valid_id("fleet-2026.11_a")
                && !valid_id("")
                && !valid_id("a/b")
                && !valid_id(&"x".repeat(65))
        );
    }
}
