//! The autoscaler's decision: a pure function of a full window's summary, the job's
//! settings and what the autoscaler remembers (docs/architecture.md, "The autoscaler").

use sluice_crds::status::IneffectiveScaleUp;

use super::window::Summary;

/// Below this busy share, a worker's capacity cannot be told from its processing rate:
/// the share is taken as this.
const MIN_MEASURABLE_UTILIZATION: f64 = 0.05;

/// A scale-up that raised capacity by less than this factor did not help.
const HELPED: f64 = 1.10;

/// The settings a decision uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `autoscaler.minParallelism`.
    pub min_parallelism: i32,
    /// `autoscaler.maxParallelism`, at most the job's `maxParallelism`.
    pub max_parallelism: i32,
    /// The job's `maxParallelism`: its key groups.
    pub key_groups: i32,
    /// `targetUtilizationPercent` / 100.
    pub target_utilization: f64,
    /// `catchUpDuration`, in seconds.
    pub catch_up_seconds: f64,
    /// `scaleDownDelay`, in seconds.
    pub scale_down_delay_seconds: f64,
}

/// What the autoscaler remembers between decisions.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Memory {
    /// When it last scaled (seconds, the window's clock), and from which parallelism.
    pub last_scale: Option<(f64, i32)>,
    /// The job's capacity measured before the last scale-up.
    pub capacity_before_scale: Option<f64>,
    /// A scale-up that did not help.
    pub ineffective: Option<IneffectiveScaleUp>,
    /// When the first full window after the last scale-up ended: whether it helped is
    /// judged on a window that starts after it, since that first one still holds the
    /// workers' warm-up (state restored, fetch buffers filling).
    pub judge_after: Option<f64>,
    /// Recommendations of the last `scaleDownDelay`, oldest first.
    pub recommendations: Vec<Recommendation>,
    /// Since when recommendations have been recorded at this parallelism.
    pub observed_since: Option<f64>,
    /// How long the workers took to restart at the last rescale, in seconds.
    pub restart_seconds: Option<f64>,
}

/// A parallelism a window asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recommendation {
    /// When (the window's clock).
    pub at: f64,
    /// When the window's oldest sample was taken.
    pub window_started_at: f64,
    /// The parallelism.
    pub parallelism: i32,
}

/// The highest parallelism among `recommendations` (those of the last `delay` seconds
/// before `now`) asked for by the windows that lie wholly within the delay, or, when none
/// does (a window longer than the delay), by any of them. A window that began before the
/// delay can still hold the load from before a drop: after a step down, the first windows
/// average the old and the new rate, and going to what they asked for would take a second
/// scale-down later.
fn highest_within(recommendations: &[Recommendation], delay: f64, now: f64) -> Option<i32> {
    let highest_since = |start: f64| {
        recommendations
            .iter()
            .filter(|recommendation| recommendation.window_started_at >= start)
            .map(|recommendation| recommendation.parallelism)
            .max()
    };
    highest_since(now - delay).or_else(|| highest_since(f64::NEG_INFINITY))
}

/// The restart time assumed before one is measured.
pub const DEFAULT_RESTART_SECONDS: f64 = 60.0;

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep the parallelism.
    Stay,
    /// Rescale to this parallelism.
    Scale(i32),
}

/// Why nothing was scaled although something is wrong (an Event `AutoscalerRefused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Partitions stalled, stopped or rewound: a stuck job.
    Stuck,
    /// The capacity of a worker cannot be measured yet.
    Unmeasurable,
    /// The parallelism it would choose did not help before.
    Ineffective,
}

/// A decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// The parallelism the window asks for, when it can tell.
    pub recommended: Option<i32>,
    /// Why, in words.
    pub reason: String,
    /// Set when scaling was refused.
    pub refusal: Option<Refusal>,
    /// The job's capacity now (records per second when fully busy), when measurable.
    pub capacity: Option<f64>,
    /// What the autoscaler remembers after this decision.
    pub memory: Memory,
}

/// The most loaded worker's share of the job at parallelism `p`: of the source
/// partitions and of the key groups, whichever is larger.
pub fn heaviest_share(p: i32, partitions: i32, key_groups: i32) -> f64 {
    let share = |units: i32| {
        if units <= 0 {
            0.0
        } else {
            f64::from((units + p - 1) / p) / f64::from(units)
        }
    };
    share(partitions).max(share(key_groups))
}

/// The smallest parallelism in `min..=max` whose most loaded worker carries at most
/// `1/wanted` of the job, so that `wanted` workers' worth of capacity is really there;
/// when fewer partitions than that make it unreachable, the key groups alone decide.
pub fn aligned(wanted: f64, min: i32, max: i32, partitions: i32, key_groups: i32) -> i32 {
    let max = max.max(min);
    if wanted <= 1.0 {
        return min;
    }
    let limit = 1.0 / wanted + 1e-9;
    (min..=max)
        .find(|&p| heaviest_share(p, partitions, key_groups) <= limit)
        .or_else(|| (min..=max).find(|&p| heaviest_share(p, 0, key_groups) <= limit))
        .unwrap_or(max)
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// The decision at `now` for a job running `parallelism` workers.
pub fn decide(
    summary: &Summary,
    parallelism: i32,
    settings: &Settings,
    memory: &Memory,
    now: f64,
) -> Decision {
    let mut memory = memory.clone();
    let stay = |reason: String, refusal: Option<Refusal>, memory: Memory| Decision {
        action: Action::Stay,
        recommended: None,
        reason,
        refusal,
        capacity: None,
        memory,
    };
    // 1. A stuck job needs a person, not more workers.
    let classes = &summary.classes;
    if classes.stall + classes.stop + classes.rewind > 0 {
        let names: Vec<String> = summary
            .stuck
            .iter()
            .take(5)
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        let what = if classes.stop > 0 {
            "not committing (workers not ready)"
        } else if classes.rewind > 0 {
            "rewound"
        } else {
            "stalled (committing nothing while lag waits)"
        };
        return stay(
            format!(
                "not scaling: {} partition(s) {what}: {}; a stuck job needs fixing, not more workers",
                classes.stall + classes.stop + classes.rewind,
                names.join(", ")
            ),
            Some(Refusal::Stuck),
            memory,
        );
    }
    // A partition that stopped moving lately, or a worker not ready: wait for the window
    // to tell a stuck job from a slow one.
    if !summary.quiet.is_empty() || !summary.workers_ready {
        let reason = if summary.workers_ready {
            let names: Vec<String> = summary
                .quiet
                .iter()
                .take(5)
                .map(|(topic, partition)| format!("{topic}/{partition}"))
                .collect();
            format!(
                "no decision: the position of {} partition(s) with lag has not moved lately ({}); waiting for the window to tell a stuck job from a slow one",
                summary.quiet.len(),
                names.join(", ")
            )
        } else {
            "no decision: a worker is not ready".to_string()
        };
        return stay(reason, None, memory);
    }
    // 2. What one fully busy worker does.
    let utilization = summary.utilization;
    // Below 5% busy the estimate is a lower bound of the capacity (so an upper bound of
    // the need): safe for scaling down, and a job that idle is never scaled up.
    let per_worker = match utilization {
        Some(busy) if summary.processing_rate > 0.0 => Some(
            summary.processing_rate
                / (f64::from(parallelism) * busy.max(MIN_MEASURABLE_UTILIZATION)),
        ),
        _ => None,
    };
    // 3. The need at an input rate: the input at the target utilization, or, when more,
    // the input plus the backlog (the lag, and the input that piles up while the workers
    // restart) worked off within catchUpDuration by fully busy workers. (Not their sum, as
    // the Flink autoscaler takes: the headroom the target leaves is what works a backlog
    // off; counting both scaled up on a burst the workers absorbed within
    // catchUpDuration, in `sluice-bench-autoscaler`.) Up is judged at the lower of the
    // window's and the recent input rates, down at the higher, so a burst shorter than
    // the window does not scale up and a lull does not scale down.
    let restart = memory.restart_seconds.unwrap_or(DEFAULT_RESTART_SECONDS);
    let needed_rate = |input: f64| {
        (input / settings.target_utilization)
            .max(input + (summary.lag as f64 + input * restart) / settings.catch_up_seconds)
    };
    let (up_input, down_input) = (
        summary.input_rate.min(summary.recent_input_rate),
        summary.input_rate.max(summary.recent_input_rate),
    );
    let (wanted_up, wanted_down) = match per_worker {
        Some(per_worker) => (
            needed_rate(up_input) / per_worker,
            needed_rate(down_input) / per_worker,
        ),
        None if summary.lag == 0 && down_input == 0.0 => (0.0, 0.0),
        None => {
            return stay(
                format!(
                    "no decision: a worker's capacity cannot be measured yet (utilization {}, {:.0} records/s processed)",
                    utilization.map_or_else(|| "unknown".to_string(), percent),
                    summary.processing_rate
                ),
                Some(Refusal::Unmeasurable),
                memory,
            );
        }
    };
    let capacity = per_worker.map(|per_worker| per_worker * f64::from(parallelism));
    // 6. Did the last scale-up help? Judged on the first full window that starts after
    // the first full window after it.
    if let (Some(before), Some(now_capacity), Some((_, from))) =
        (memory.capacity_before_scale, capacity, memory.last_scale)
    {
        match memory.judge_after {
            None => memory.judge_after = Some(now),
            Some(after) if summary.started_at >= after => {
                if from < parallelism && now_capacity < before * HELPED {
                    memory.ineffective = Some(IneffectiveScaleUp {
                        from,
                        to: parallelism,
                        input_records_per_second: summary.input_rate,
                    });
                }
                memory.capacity_before_scale = None;
                memory.judge_after = None;
            }
            Some(_) => {}
        }
    }
    if let Some(ineffective) = &memory.ineffective
        && summary.input_rate >= 2.0 * ineffective.input_records_per_second
    {
        memory.ineffective = None;
    }
    // 4. The aligned parallelism for that need.
    let align = |wanted: f64| {
        aligned(
            wanted,
            settings.min_parallelism,
            settings.max_parallelism,
            summary.partitions,
            settings.key_groups,
        )
    };
    let (up, down) = (align(wanted_up), align(wanted_down));
    let (mut recommended, wanted) = if up > parallelism {
        (up, wanted_up)
    } else if down < parallelism {
        (down, wanted_down)
    } else {
        (parallelism, wanted_down)
    };
    // An ineffective scale-up is not repeated, but it is not undone either: the job keeps
    // the workers it runs while it needs them.
    let mut capped = false;
    let ceiling = memory.ineffective.as_ref().map(|ineffective| {
        ineffective
            .from
            .max(parallelism)
            .max(settings.min_parallelism)
    });
    if let Some(ceiling) = ceiling
        && recommended > ceiling
    {
        recommended = ceiling;
        capped = true;
    }
    memory.observed_since.get_or_insert(now);
    memory.recommendations.push(Recommendation {
        at: now,
        window_started_at: summary.started_at,
        parallelism: recommended,
    });
    memory
        .recommendations
        .retain(|recommendation| now - recommendation.at <= settings.scale_down_delay_seconds);
    let mut figures = format!(
        "needs {wanted:.1} workers' capacity ({:.0} records/s in, lag {}, utilization {})",
        summary.input_rate,
        summary.lag,
        utilization.map_or_else(|| "unknown".to_string(), percent),
    );
    if let Some(ineffective) = memory.ineffective.as_ref().filter(|_| capped) {
        figures.push_str(&format!(
            "; held at {recommended} workers: scaling up from {} to {} did not raise capacity (until the input rate doubles from {:.0} records/s)",
            ineffective.from, ineffective.to, ineffective.input_records_per_second
        ));
    }
    let capped_refusal = capped.then_some(Refusal::Ineffective);
    let decision = |action, reason: String, refusal: Option<Refusal>, memory| Decision {
        action,
        recommended: Some(recommended),
        reason,
        refusal: refusal.or(if action == Action::Stay {
            capped_refusal
        } else {
            None
        }),
        capacity,
        memory,
    };
    // 5. Up at once when the job falls behind; or when the workers run hotter than the
    // target by half the headroom left above it (85% for a 70% target: a band, so a
    // burst that lifts the window's mean a little above the target does not scale),
    // counting only the share the input takes when they work a backlog off (busy by
    // design: that is what the headroom is for); or when, working it off, they could
    // not finish within catchUpDuration even fully busy. (Falling behind, the window's
    // classification decides, so that a burst shorter than the window does not scale.)
    if recommended > parallelism {
        let behind = classes.warn > 0;
        let hot_above = settings.target_utilization + (1.0 - settings.target_utilization) / 2.0;
        let catching_up = summary.processing_rate > up_input;
        let input_share = utilization.zip(capacity).map(|(busy, capacity)| {
            if catching_up {
                up_input / capacity
            } else {
                busy
            }
        });
        let hot = input_share.is_some_and(|share| share > hot_above);
        let catch_up_rate = up_input + summary.lag as f64 / settings.catch_up_seconds;
        let late = catching_up && capacity.is_some_and(|capacity| catch_up_rate > capacity);
        if !(behind || hot || late) {
            return decision(
                Action::Stay,
                format!(
                    "{figures}: {recommended} workers would be chosen, but nothing falls behind"
                ),
                None,
                memory,
            );
        }
        memory.last_scale = Some((now, parallelism));
        memory.capacity_before_scale = capacity;
        memory.judge_after = None;
        memory.recommendations.clear();
        memory.observed_since = None;
        return decision(
            Action::Scale(recommended),
            format!(
                "scaling up from {parallelism} to {recommended}: {figures}, {}",
                if behind {
                    format!("{} partition(s) falling behind", classes.warn)
                } else if hot {
                    format!(
                        "{} busy for the input, above {} (target {})",
                        percent(input_share.unwrap_or_default()),
                        percent(hot_above),
                        percent(settings.target_utilization)
                    )
                } else {
                    format!(
                        "the lag cannot be worked off within catchUpDuration ({catch_up_rate:.0} records/s needed, {:.0} possible)",
                        capacity.unwrap_or_default()
                    )
                }
            ),
            None,
            memory,
        );
    }
    if recommended < parallelism {
        if classes.warn > 0 || classes.ok < summary.partitions {
            return decision(
                Action::Stay,
                format!("{figures}: no scale-down while a backlog is worked off"),
                None,
                memory,
            );
        }
        if let Some((at, _)) = memory.last_scale
            && now - at < settings.scale_down_delay_seconds
        {
            return decision(
                Action::Stay,
                format!(
                    "{figures}: {recommended} workers would do; scaled {:.0}s ago, scaleDownDelay is {:.0}s",
                    now - at,
                    settings.scale_down_delay_seconds
                ),
                None,
                memory,
            );
        }
        let observed_since = memory.observed_since.unwrap_or(now);
        if now - observed_since < settings.scale_down_delay_seconds {
            return decision(
                Action::Stay,
                format!(
                    "{figures}: {recommended} workers would do; low load for {:.0}s of the {:.0}s scaleDownDelay",
                    now - observed_since,
                    settings.scale_down_delay_seconds
                ),
                None,
                memory,
            );
        }
        // When every recommendation of the delay is below the parallelism, the
        // scale-down goes to the highest that windows wholly within the delay asked for.
        let every_lower = memory
            .recommendations
            .iter()
            .all(|recommendation| recommendation.parallelism < parallelism);
        if every_lower {
            let highest = highest_within(
                &memory.recommendations,
                settings.scale_down_delay_seconds,
                now,
            )
            .unwrap_or(recommended);
            memory.last_scale = Some((now, parallelism));
            memory.capacity_before_scale = None;
            memory.recommendations.clear();
            memory.observed_since = None;
            return Decision {
                recommended: Some(highest),
                ..decision(
                    Action::Scale(highest),
                    format!(
                        "scaling down from {parallelism} to {highest}, the highest recommendation of the windows within the last {:.0}s: {figures}",
                        settings.scale_down_delay_seconds
                    ),
                    None,
                    memory,
                )
            };
        }
    }
    decision(
        Action::Stay,
        format!("{figures}: {parallelism} workers are right"),
        None,
        memory,
    )
}

#[cfg(test)]
mod tests {
    use sluice_crds::status::PartitionClasses;

    use super::*;

    fn settings() -> Settings {
        Settings {
            min_parallelism: 1,
            max_parallelism: 16,
            key_groups: 128,
            target_utilization: 0.7,
            catch_up_seconds: 300.0,
            scale_down_delay_seconds: 600.0,
        }
    }

    /// A window of 12 partitions, all of `class` ("ok", "warn", "stall", "stop").
    fn summary(class: &str, lag: i64, input: f64, processed: f64, busy: Option<f64>) -> Summary {
        let mut classes = PartitionClasses::default();
        match class {
            "ok" => classes.ok = 12,
            "warn" => classes.warn = 12,
            "stall" => classes.stall = 1,
            "stop" => classes.stop = 1,
            other => panic!("{other}"),
        }
        if class == "stall" || class == "stop" {
            classes.ok = 11;
        }
        Summary {
            started_at: -120.0,
            classes,
            stuck: if class == "stall" || class == "stop" {
                vec![("in".into(), 3)]
            } else {
                vec![]
            },
            lag,
            input_rate: input,
            recent_input_rate: input,
            processing_rate: processed,
            utilization: busy,
            partitions: 12,
            quiet: vec![],
            workers_ready: class != "stop",
        }
    }

    #[test]
    fn alignment_gives_every_worker_an_even_share() {
        // (wanted workers, partitions, key groups, chosen)
        let cases = [
            (0.0, 12, 128, 1),
            (1.0, 12, 128, 1),
            (1.2, 12, 128, 2),
            // 5 workers: one still carries 3 of 12 partitions, as with 4: 6 give 2 each.
            (4.5, 12, 128, 6),
            (4.0, 12, 128, 4),
            (2.1, 12, 128, 3),
            // More workers than partitions: the key groups decide.
            // 43 of 128 at 3 workers is more than a third: 4.
            (3.0, 1, 128, 4),
            (5.0, 4, 128, 6),
            // 128 key groups over 7 workers: 19 at most; 8 gives 16 each, within 1/7.5.
            (7.5, 64, 128, 8),
            // Bounded by maxParallelism.
            (40.0, 64, 128, 16),
        ];
        for (wanted, partitions, key_groups, chosen) in cases {
            assert_eq!(
                aligned(wanted, 1, 16, partitions, key_groups),
                chosen,
                "wanted {wanted}, {partitions} partitions, {key_groups} key groups"
            );
        }
    }

    #[test]
    fn decisions_over_scenarios() {
        struct Case {
            name: &'static str,
            summary: Summary,
            parallelism: i32,
            memory: Memory,
            now: f64,
            action: Action,
            refusal: Option<Refusal>,
        }
        // Recommendations recorded since `since`, the highest `recommended`, 300 s ago.
        let quiet_since = |since: f64, recommended: i32| Memory {
            recommendations: vec![Recommendation {
                at: -300.0,
                window_started_at: -420.0,
                parallelism: recommended,
            }],
            observed_since: Some(since),
            ..Memory::default()
        };
        let cases = vec![
            Case {
                // 1,000 records/s, 2 workers at 50% each: 1,000/s per busy worker; needs
                // The larger of 1000/0.7 and 1000 + (0 + 60 s of input)/300 s: 1,429/s → 1.4 → 2.
                name: "steady load at the right size",
                summary: summary("ok", 0, 1000.0, 1000.0, Some(0.5)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                name: "a 4x step up: falling behind, hot",
                summary: summary("warn", 120_000, 4000.0, 2000.0, Some(1.0)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                // 4000/0.7 = 5714/s (more than 4000 + (120,000 + 240,000)/300 = 5200/s) over
                // 1000/s per worker → 5.7 → 6 (two of the 12 partitions each).
                action: Action::Scale(6),
                refusal: None,
            },
            Case {
                name: "a step down waits for the delay",
                summary: summary("ok", 0, 250.0, 250.0, Some(0.125)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                name: "a step down after the delay goes to the highest recommendation",
                summary: summary("ok", 0, 250.0, 250.0, Some(0.125)),
                parallelism: 4,
                memory: quiet_since(-700.0, 2),
                now: 0.0,
                action: Action::Scale(2),
                refusal: None,
            },
            Case {
                name: "no step down within the delay of the last scaling",
                summary: summary("ok", 0, 250.0, 250.0, Some(0.125)),
                parallelism: 4,
                memory: Memory {
                    last_scale: Some((-100.0, 2)),
                    ..quiet_since(-700.0, 1)
                },
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                // 1,000 records/s per worker; the input alone 80% of two: not hot, and
                // 1600 + 100,000/300 = 1,933/s works the lag off in time.
                name: "a backlog worked off within catchUpDuration, fully busy: no scale-up",
                summary: summary("ok", 100_000, 1600.0, 2000.0, Some(1.0)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                // 1600 + 300,000/300 = 2,600/s needed, 2,000 possible.
                name: "a backlog too large for catchUpDuration, although shrinking: up",
                summary: summary("ok", 300_000, 1600.0, 2000.0, Some(1.0)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Scale(3),
                refusal: None,
            },
            Case {
                // The input alone keeps two workers 90% busy: above the 85% band.
                name: "the input alone above the band: up",
                summary: summary("ok", 0, 1800.0, 1800.0, Some(0.9)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Scale(3),
                refusal: None,
            },
            Case {
                name: "a burst shorter than the window: lag shrinking, not hot",
                summary: summary("ok", 5_000, 1000.0, 1200.0, Some(0.6)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                name: "a burst shorter than the window: hot, but the input is back down",
                summary: Summary {
                    recent_input_rate: 1000.0,
                    ..summary("ok", 5_000, 2000.0, 1800.0, Some(0.9))
                },
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                name: "no step down while a backlog is worked off",
                summary: summary("warn", 50_000, 100.0, 100.0, Some(0.05)),
                parallelism: 8,
                memory: quiet_since(-700.0, 1),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                name: "a stalled partition: no scaling",
                summary: summary("stall", 90_000, 4000.0, 2000.0, Some(1.0)),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: Some(Refusal::Stuck),
            },
            Case {
                name: "a stopped partition: no scaling",
                summary: summary("stop", 90_000, 4000.0, 0.0, None),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: Some(Refusal::Stuck),
            },
            Case {
                name: "falling behind, but a partition stopped moving lately: no decision",
                summary: Summary {
                    quiet: vec![("in".into(), 3)],
                    ..summary("warn", 120_000, 4000.0, 2000.0, Some(1.0))
                },
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: None,
            },
            Case {
                name: "a missing busy measurement with lag: no decision",
                summary: summary("warn", 90_000, 4000.0, 2000.0, None),
                parallelism: 2,
                memory: Memory::default(),
                now: 0.0,
                action: Action::Stay,
                refusal: Some(Refusal::Unmeasurable),
            },
            Case {
                name: "no input, no lag: down to the minimum after the delay",
                summary: summary("ok", 0, 0.0, 0.0, Some(0.0)),
                parallelism: 3,
                memory: quiet_since(-700.0, 1),
                now: 0.0,
                action: Action::Scale(1),
                refusal: None,
            },
            Case {
                name: "a scale-up that did not help is not repeated",
                // Was 2 workers with 2,000/s capacity; at 4 the capacity is 2,000/s still.
                summary: summary("warn", 100_000, 4000.0, 2000.0, Some(1.0)),
                parallelism: 4,
                memory: Memory {
                    last_scale: Some((-200.0, 2)),
                    capacity_before_scale: Some(2000.0),
                    // The first full window after it ended before this one started.
                    judge_after: Some(-130.0),
                    ..Memory::default()
                },
                now: 0.0,
                action: Action::Stay,
                refusal: Some(Refusal::Ineffective),
            },
            Case {
                name: "the cap lifts when the input rate doubles",
                summary: summary("warn", 100_000, 8000.0, 2000.0, Some(1.0)),
                parallelism: 2,
                memory: Memory {
                    ineffective: Some(IneffectiveScaleUp {
                        from: 2,
                        to: 4,
                        input_records_per_second: 4000.0,
                    }),
                    ..Memory::default()
                },
                now: 0.0,
                // 11.4 workers' worth: 12 (one partition each).
                action: Action::Scale(12),
                refusal: None,
            },
        ];
        for case in cases {
            let decision = decide(
                &case.summary,
                case.parallelism,
                &settings(),
                &case.memory,
                case.now,
            );
            assert_eq!(
                (decision.action, decision.refusal),
                (case.action, case.refusal),
                "{}: {}",
                case.name,
                decision.reason
            );
        }
    }

    #[test]
    fn a_step_down_goes_to_what_windows_within_the_delay_asked_for() {
        // 4 workers, 250 records/s now (1 worker would do), scaleDownDelay 600 s, low
        // load observed for 700 s. Earlier windows as (window start, recorded at,
        // parallelism asked for), and the start of the newest window (asking for 1).
        type Earlier = &'static [(f64, f64, i32)];
        let cases: [(&str, Earlier, f64, Action); 5] = [
            (
                "a window that began before the delay, averaging the load before a drop",
                &[(-720.0, -590.0, 3), (-420.0, -300.0, 1)],
                -120.0,
                Action::Scale(1),
            ),
            (
                "a window within the delay asked for more than the newest",
                &[(-720.0, -590.0, 3), (-420.0, -300.0, 2)],
                -120.0,
                Action::Scale(2),
            ),
            (
                "every window began before the delay (longer than it): the highest of all",
                &[(-900.0, -590.0, 3), (-800.0, -300.0, 2)],
                -700.0,
                Action::Scale(3),
            ),
            (
                "one asked for the parallelism running: no scale-down",
                &[(-720.0, -590.0, 4), (-420.0, -300.0, 1)],
                -120.0,
                Action::Stay,
            ),
            (
                "older than the delay: forgotten",
                &[(-900.0, -700.0, 4), (-420.0, -300.0, 1)],
                -120.0,
                Action::Scale(1),
            ),
        ];
        for (case, recommended, newest_window_start, action) in cases {
            let memory = Memory {
                recommendations: recommended
                    .iter()
                    .map(|&(window_started_at, at, parallelism)| Recommendation {
                        at,
                        window_started_at,
                        parallelism,
                    })
                    .collect(),
                observed_since: Some(-700.0),
                ..Memory::default()
            };
            let decision = decide(
                &Summary {
                    started_at: newest_window_start,
                    ..summary("ok", 0, 250.0, 250.0, Some(0.125))
                },
                4,
                &settings(),
                &memory,
                0.0,
            );
            assert_eq!(decision.action, action, "{case}: {}", decision.reason);
        }
    }

    #[test]
    fn the_second_window_after_a_scale_up_says_whether_it_helped() {
        let memory = Memory {
            last_scale: Some((-200.0, 2)),
            capacity_before_scale: Some(2000.0),
            ..Memory::default()
        };
        let window = |started_at: f64, class: &str, lag: i64, input: f64, busy: f64| Summary {
            started_at,
            ..summary(class, lag, input, 2000.0, Some(busy))
        };
        // The first full window still holds the warm-up (capacity unchanged, 2,000/s at
        // 4 workers fully busy): not judged.
        let first = decide(
            &window(-16.0, "ok", 0, 1000.0, 1.0),
            4,
            &settings(),
            &memory,
            0.0,
        );
        assert_eq!(first.memory.ineffective, None, "{}", first.reason);
        assert_eq!(first.memory.judge_after, Some(0.0));
        assert_eq!(first.memory.capacity_before_scale, Some(2000.0));
        // A window overlapping the first one: not judged either.
        let overlapping = decide(
            &window(-10.0, "ok", 0, 1000.0, 1.0),
            4,
            &settings(),
            &first.memory,
            6.0,
        );
        assert_eq!(overlapping.memory.ineffective, None);
        assert_eq!(overlapping.memory.capacity_before_scale, Some(2000.0));
        // The next window: capacity doubled (4 workers half busy at 2,000/s): no cap.
        let helped = decide(
            &window(0.0, "ok", 0, 2000.0, 0.5),
            4,
            &settings(),
            &first.memory,
            16.0,
        );
        assert_eq!(helped.action, Action::Stay, "{}", helped.reason);
        assert_eq!(helped.memory.ineffective, None);
        assert_eq!(helped.memory.capacity_before_scale, None);
        assert_eq!(helped.memory.judge_after, None);
        // Or capacity unchanged: remembered.
        let not = decide(
            &window(0.0, "warn", 9000, 3000.0, 1.0),
            4,
            &settings(),
            &first.memory,
            16.0,
        );
        assert_eq!(
            not.memory
                .ineffective
                .map(|ineffective| (ineffective.from, ineffective.to)),
            Some((2, 4))
        );
    }

    #[test]
    fn an_ineffective_scale_up_is_not_repeated_nor_undone_while_needed() {
        let ineffective = Memory {
            ineffective: Some(IneffectiveScaleUp {
                from: 2,
                to: 4,
                input_records_per_second: 3000.0,
            }),
            observed_since: Some(-1000.0),
            ..Memory::default()
        };
        // At 4 workers, busy and behind, wanting more than 4 (max 8): held at 4, never
        // sent back to 2 while the backlog is worked off.
        let cases = [
            // (case, parallelism, summary, action)
            (
                "at 4, behind",
                4,
                summary("warn", 900_000, 3000.0, 3000.0, Some(1.0)),
                Action::Stay,
            ),
            (
                "at 4, catching up",
                4,
                summary("ok", 400_000, 3000.0, 4000.0, Some(0.95)),
                Action::Stay,
            ),
            (
                "at 2, behind: not scaled up to 4 again",
                2,
                summary("warn", 900_000, 3000.0, 2000.0, Some(1.0)),
                Action::Stay,
            ),
        ];
        for (case, parallelism, summary, action) in cases {
            let decision = decide(&summary, parallelism, &settings(), &ineffective, 0.0);
            assert_eq!(decision.action, action, "{case}: {}", decision.reason);
            assert!(
                decision.recommended >= Some(parallelism),
                "{case}: {:?} {}",
                decision.recommended,
                decision.reason
            );
        }
    }

    #[test]
    fn a_steady_hour_of_samples_never_scales() {
        // An hour of decisions every 15 s over a steady load with noise: none scales.
        let mut memory = Memory::default();
        let mut scalings = 0;
        for step in 0..240 {
            let noise = f64::from((step * 7919) % 100) / 1000.0; // 0 to 10%
            let input = 1000.0 * (1.0 + noise - 0.05);
            let decision = decide(
                &summary(
                    "ok",
                    (input * 0.5) as i64,
                    input,
                    input,
                    Some(input / 2000.0),
                ),
                2,
                &settings(),
                &memory,
                f64::from(step) * 15.0,
            );
            if decision.action != Action::Stay {
                scalings += 1;
            }
            memory = decision.memory;
        }
        assert_eq!(scalings, 0);
    }
}
