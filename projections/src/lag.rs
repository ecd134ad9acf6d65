//! When a projection's lag is worth a log line. The runtime checks every projection each
//! [`lag_log_interval`](crate::ProjectorConfig::lag_log_interval) (30 s by default) and
//! logs only a projection that is behind or changed state, so an idle or keeping-up
//! server logs nothing:
//!
//! * `projection behind` (warn): more than [`LAG_LOG_THRESHOLD`] events behind the head,
//!   or behind at the last check too with its checkpoint not moved since (stuck);
//!   repeated at every check while it stays behind;
//! * `projection caught up` (info): no longer behind, or running again after a rebuild
//!   or a failure;
//! * `projection rebuilding` (info): at every check while a new version is being built;
//! * `projection failed` (error): once, when it stops after an error.
//!
//! The lag itself is always available at `GET /metrics` and `GET /v1/projections`.

use paystream_store::Position;

/// A projection more than this many events behind the head is logged as behind.
pub const LAG_LOG_THRESHOLD: u64 = 10_000;

/// What a projection is doing, as far as the lag log is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Kept current by the follower (or being built from position 0 by it).
    Following,
    Rebuilding,
    Failed,
}

/// A projection at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    checkpoint: Position,
    lag: u64,
    phase: Phase,
    /// Logged as behind at this check.
    behind: bool,
}

/// The line a check logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LagLine {
    Behind,
    CaughtUp,
    Rebuilding,
    Failed,
}

/// This check of a projection (`previous` is the last one, if any): what to remember,
/// and the line to log, if any.
pub(crate) fn judge(
    previous: Option<Seen>,
    checkpoint: Position,
    head: Position,
    phase: Phase,
) -> (Seen, Option<LagLine>) {
    let lag = head.saturating_sub(checkpoint);
    let was = previous.map(|p| p.phase);
    let (behind, line) = match phase {
        Phase::Failed => (false, (was != Some(Phase::Failed)).then_some(LagLine::Failed)),
        Phase::Rebuilding => (false, Some(LagLine::Rebuilding)),
        Phase::Following => {
            // Short of the head at the last check already, and not moved since.
            let stuck = lag > 0
                && previous.is_some_and(|p| p.phase == Phase::Following && p.lag > 0 && p.checkpoint == checkpoint);
            let behind = lag > LAG_LOG_THRESHOLD || stuck;
            let line = if behind {
                Some(LagLine::Behind)
            } else if matches!(was, Some(Phase::Rebuilding | Phase::Failed)) || previous.is_some_and(|p| p.behind) {
                Some(LagLine::CaughtUp)
            } else {
                None
            };
            (behind, line)
        }
    };
    (Seen { checkpoint, lag, phase, behind }, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(checks: &[(Position, Position, Phase)]) -> Vec<Option<LagLine>> {
        let mut seen = None;
        checks
            .iter()
            .map(|&(checkpoint, head, phase)| {
                let (now, line) = judge(seen, checkpoint, head, phase);
                seen = Some(now);
                line
            })
            .collect()
    }

    #[test]
    fn an_idle_or_keeping_up_projection_logs_nothing() {
        use Phase::Following as F;
        assert_eq!(run(&[(0, 0, F), (0, 0, F), (0, 0, F)]), [None, None, None]);
        // Under load: a little behind at each check, but moving.
        assert_eq!(run(&[(90, 100, F), (990, 1_000, F), (5_000, 6_200, F)]), [None, None, None]);
        // The checkpoint did not move because no event came.
        assert_eq!(run(&[(100, 100, F), (100, 100, F)]), [None, None]);
    }

    #[test]
    fn far_behind_is_logged_until_caught_up_then_once() {
        use Phase::Following as F;
        let lines = run(&[(0, 50_000, F), (20_000, 60_000, F), (60_000, 60_000, F), (60_000, 60_000, F)]);
        assert_eq!(lines, [Some(LagLine::Behind), Some(LagLine::Behind), Some(LagLine::CaughtUp), None]);
    }

    #[test]
    fn a_stuck_checkpoint_is_behind_even_when_close() {
        use Phase::Following as F;
        // Behind by 5 at the first check; the next check finds it where it was.
        let lines = run(&[(95, 100, F), (95, 120, F), (120, 120, F)]);
        assert_eq!(lines, [None, Some(LagLine::Behind), Some(LagLine::CaughtUp)]);
    }

    #[test]
    fn state_changes_are_logged_once() {
        use Phase::{Failed, Following, Rebuilding};
        let lines = run(&[
            (10, 10, Following),
            (10, 10, Rebuilding),
            (10, 12, Rebuilding),
            (12, 12, Following),
            (12, 12, Following),
            (12, 15, Failed),
            (12, 20, Failed),
            (20, 20, Following),
        ]);
        assert_eq!(
            lines,
            [
                None,
                Some(LagLine::Rebuilding),
                Some(LagLine::Rebuilding),
                Some(LagLine::CaughtUp),
                None,
                Some(LagLine::Failed),
                None,
                Some(LagLine::CaughtUp),
            ]
        );
    }
}
