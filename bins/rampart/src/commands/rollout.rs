//! `rampart rollout`: staged rollouts of a published release to a group or a list of devices.
//!
//! The work is `rampart_hub::rollouts`; this module parses arguments and prints.

use clap::Subcommand;
use rampart_hub::rollouts::{self, Audience, NewRollout, RolloutStatus, Step};
use rampart_update::rollout::{Approval, Plan, Waves};

use super::when;
use crate::{CliError, DataDirArg};

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout: install a published release on a group or a list of devices, wave
    /// by wave.
    ///
    /// Each device of the current wave is sent a retained install instruction on
    /// devices/ID/update/command; the agent verifies the release like any update (TUF
    /// signatures, its hardware, no downgrade) and reports each stage. The rollout pauses
    /// by itself when a wave's failures exceed --failure-threshold.
    Start {
        #[command(flatten)]
        dir: DataDirArg,
        /// A name for the rollout (letters, digits, '.', '_', '-'), e.g. gw-1.2.0-eu.
        id: String,
        /// The published target to install, e.g. releases/1.2.0/app.tar (see `rampart
        /// release status`).
        #[arg(long)]
        target: String,
        /// Every active device of this group.
        #[arg(long, conflicts_with = "devices", required_unless_present = "devices")]
        group: Option<String>,
        /// These devices, comma-separated; the first ones form the first wave.
        #[arg(long, value_delimiter = ',')]
        devices: Vec<String>,
        /// How devices are split: fixed:SIZE (e.g. fixed:10) or exponential:FIRST:FACTOR
        /// (e.g. exponential:2:2 for waves of 2, 4, 8, ...).
        #[arg(long, default_value = "exponential:1:2")]
        waves: Waves,
        /// Percentage of a wave that must succeed before the next one starts.
        #[arg(long, default_value_t = 90, value_name = "PERCENT")]
        success_threshold: u8,
        /// Percentage of a wave allowed to fail; one failure more pauses the rollout.
        #[arg(long, default_value_t = 10, value_name = "PERCENT")]
        failure_threshold: u8,
        /// Wait for `rampart rollout approve ID` after each wave.
        #[arg(long)]
        manual_approval: bool,
        #[arg(long)]
        json: bool,
    },
    /// Where a rollout is: its state, each wave, and every device.
    Status {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List rollouts, newest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
    /// Start the next wave of a rollout that waits for approval.
    Approve {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
    /// Stop sending install instructions (devices already told carry on).
    Pause {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
        /// Why (recorded in the audit log and shown by `status`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused rollout; the failures so far in its wave are accepted, further
    /// ones count against the threshold again.
    Resume {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
    /// End a rollout for good: devices it reached are told to roll back to the version
    /// they ran before; devices it never reached are cancelled.
    Abort {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

fn print(s: &RolloutStatus, json: bool) -> Result<(), CliError> {
    if json {
        let text =
            serde_json::to_string_pretty(s).map_err(|e| CliError::new(e.to_string(), None))?;
        println!("{text}");
        return Ok(());
    }
    println!("rollout  {}", s.id);
    println!("target   {} (version {})", s.target, s.version);
    println!(
        "state    {}{}",
        s.state,
        s.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    println!(
        "plan     waves {}, success ≥ {}%, failures ≤ {}%, approval {}",
        s.plan.waves,
        s.plan.success_pct,
        s.plan.failure_pct,
        match s.plan.approval {
            Approval::Automatic => "automatic",
            Approval::Manual => "manual",
        }
    );
    println!("wave     {} of {}", s.wave, s.waves);
    let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("devices  {}", counts.join(", "));
    println!();
    println!(
        "{:>4} {:>5} {:>8} {:>11} {:>9} {:>6}",
        "WAVE", "SIZE", "PENDING", "IN PROGRESS", "SUCCEEDED", "FAILED"
    );
    for w in &s.per_wave {
        println!(
            "{:>4} {:>5} {:>8} {:>11} {:>9} {:>6}",
            w.wave, w.size, w.pending, w.in_progress, w.succeeded, w.failed
        );
    }
    println!();
    println!(
        "{:24} {:>4} {:12} {:25} DETAIL",
        "DEVICE", "WAVE", "STATE", "UPDATED"
    );
    for d in &s.devices {
        println!(
            "{:24} {:>4} {:12} {:25} {}",
            d.device_id,
            d.wave + 1,
            d.state,
            when(Some(d.updated_at)),
            d.detail.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn run(cmd: RolloutCommand) -> Result<(), CliError> {
    match cmd {
        RolloutCommand::Start {
            dir,
            id,
            target,
            group,
            devices,
            waves,
            success_threshold,
            failure_threshold,
            manual_approval,
            json,
        } => {
            let (d, cfg, store) = super::open(&dir.data_dir).await?;
            let audience = match group {
                Some(g) => Audience::Group(g),
                None => Audience::Devices(devices),
            };
            let plan = Plan {
                waves,
                success_pct: success_threshold,
                failure_pct: failure_threshold,
                approval: if manual_approval {
                    Approval::Manual
                } else {
                    Approval::Automatic
                },
            };
            let s = rollouts::start(
                &d,
                &cfg,
                &*store,
                NewRollout {
                    id,
                    target,
                    audience,
                    plan,
                },
            )
            .await?;
            print(&s, json)
        }
        RolloutCommand::Status { dir, id, json } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            print(&rollouts::status(&*store, &id).await?, json)
        }
        RolloutCommand::List { dir, json } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let all = rollouts::list(&*store).await?;
            if json {
                let text = serde_json::to_string_pretty(&all)
                    .map_err(|e| CliError::new(e.to_string(), None))?;
                println!("{text}");
                return Ok(());
            }
            if all.is_empty() {
                println!("no rollouts; start one with `rampart rollout start`");
            }
            for r in all {
                println!(
                    "{:24} {:18} {:12} wave {:>3}  {}  {}",
                    r.id,
                    r.state,
                    r.version,
                    r.wave + 1,
                    r.target,
                    when(Some(r.created_at))
                );
            }
            Ok(())
        }
        RolloutCommand::Approve { dir, id } => stepped(&dir, &id, Step::Approve, None).await,
        RolloutCommand::Pause { dir, id, reason } => stepped(&dir, &id, Step::Pause, reason).await,
        RolloutCommand::Resume { dir, id } => stepped(&dir, &id, Step::Resume, None).await,
        RolloutCommand::Abort { dir, id, reason } => stepped(&dir, &id, Step::Abort, reason).await,
    }
}

async fn stepped(
    dir: &DataDirArg,
    id: &str,
    step: Step,
    reason: Option<String>,
) -> Result<(), CliError> {
    let (d, _, store) = super::open(&dir.data_dir).await?;
    let s = rollouts::step(&d, &*store, id, step, reason).await?;
    println!(
        "rollout {} is {} (wave {} of {}){}",
        s.id,
        s.state,
        s.wave,
        s.waves,
        s.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    Ok(())
}
