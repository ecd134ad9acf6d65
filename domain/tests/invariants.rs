//! Property tests over random command sequences: whatever a client sends, in
//! whatever order, the payment's amounts stay within their bounds, and the
//! state folded from the stored events equals the state built step by step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use paystream_domain::id::{BatchId, CaptureId, DisputeId, RefundId};
use paystream_domain::merchant::{MerchantStatus, Tier};
use paystream_domain::payment::{
    AcquirerOutcome, AmountInput, CaptureMethod, DeclineCode, DisputeOutcome, DisputeStatus, Payment, PaymentAggregate,
    PaymentCommand, PaymentEvent, ReviewDecision,
};
use paystream_domain::testing::test_context;
use paystream_domain::Aggregate;
use proptest::prelude::*;
use support::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Authorize(bool),
    Review(bool),
    Capture(Option<i64>, bool),
    Void,
    Expire(i64),
    Refund(Option<i64>),
    OpenDispute(i64),
    ResolveDispute(usize, bool),
    Settle,
}

fn op(max: i64) -> impl Strategy<Value = Op> {
    let amount = 1..=max + max / 5 + 1;
    prop_oneof![
        2 => any::<bool>().prop_map(Op::Authorize),
        1 => any::<bool>().prop_map(Op::Review),
        4 => (proptest::option::of(amount.clone()), any::<bool>()).prop_map(|(a, f)| Op::Capture(a, f)),
        1 => Just(Op::Void),
        1 => (0_i64..10).prop_map(Op::Expire),
        4 => proptest::option::of(amount.clone()).prop_map(Op::Refund),
        2 => amount.prop_map(Op::OpenDispute),
        2 => (0_usize..4, any::<bool>()).prop_map(|(i, w)| Op::ResolveDispute(i, w)),
        1 => Just(Op::Settle),
    ]
}

fn scenario() -> impl Strategy<Value = (i64, bool, Tier, Vec<Op>)> {
    (1_i64..=90_000_000, any::<bool>(), prop_oneof![Just(Tier::A), Just(Tier::D)]).prop_flat_map(
        |(amount, auto, tier)| (Just(amount), Just(auto), Just(tier), proptest::collection::vec(op(amount), 0..40)),
    )
}

fn command(op: &Op, state: &Payment, n: u128, now_seconds: i64) -> PaymentCommand {
    let now = t(now_seconds);
    let id = Uuid::from_u128(0xABC0_0000 + n);
    match op.clone() {
        Op::Authorize(true) => PaymentCommand::RecordAuthorization {
            outcome: AcquirerOutcome::Approved { acquirer_reference: format!("acq_{n}") },
            now,
        },
        Op::Authorize(false) => PaymentCommand::RecordAuthorization {
            outcome: AcquirerOutcome::Declined { decline_code: DeclineCode::CardDeclined },
            now,
        },
        Op::Review(approve) => PaymentCommand::Review {
            decision: if approve { ReviewDecision::Approve } else { ReviewDecision::Reject },
            reason: None,
            now,
        },
        Op::Capture(amount, final_capture) => PaymentCommand::Capture {
            capture_id: CaptureId::from_uuid(id),
            amount: amount.map(AmountInput::minor),
            final_capture,
            now,
        },
        Op::Void => PaymentCommand::Void { reason: None, now },
        Op::Expire(_) => PaymentCommand::ExpireAuthorization { now },
        Op::Refund(amount) => PaymentCommand::Refund {
            refund_id: RefundId::from_uuid(id),
            amount: amount.map(AmountInput::minor),
            reason: None,
            now,
        },
        Op::OpenDispute(amount) => PaymentCommand::OpenDispute {
            dispute_id: DisputeId::from_uuid(id),
            amount: AmountInput::minor(amount),
            reason: "fraudulent".into(),
            now,
        },
        Op::ResolveDispute(index, won) => PaymentCommand::ResolveDispute {
            dispute_id: state.disputes.get(index).map(|d| d.id).unwrap_or(DisputeId::from_uuid(id)),
            outcome: if won { DisputeOutcome::Won } else { DisputeOutcome::Lost },
            now,
        },
        Op::Settle => PaymentCommand::Settle { batch_id: BatchId::from_uuid(id), now },
    }
}

fn check_bounds(p: &Payment) -> Result<(), TestCaseError> {
    let amount = p.amount.amount_minor;
    for value in [
        p.figures.amount_capturable,
        p.figures.amount_captured,
        p.figures.amount_refunded,
        p.figures.amount_settled,
        p.figures.fees_charged,
        p.amount_refundable().unwrap(),
    ] {
        prop_assert!(value >= 0, "negative amount in {p:?}");
    }
    prop_assert!(p.figures.amount_captured <= amount, "captured above authorized");
    prop_assert!(
        p.figures.amount_captured + p.figures.amount_capturable <= amount,
        "capturable + captured above authorized"
    );
    prop_assert!(
        p.figures.amount_refunded <= p.figures.amount_captured - p.amount_dispute_lost(),
        "refunded above captured minus lost disputes"
    );
    prop_assert!(
        p.figures.amount_refunded + p.amount_disputed_open() + p.amount_dispute_lost() <= p.figures.amount_captured
    );
    prop_assert!(p.figures.amount_settled <= p.figures.amount_captured);
    prop_assert_eq!(p.captures.iter().map(|c| c.amount_minor).sum::<i64>(), p.figures.amount_captured);
    prop_assert_eq!(p.refunds.iter().map(|r| r.amount_minor).sum::<i64>(), p.figures.amount_refunded);
    // The figures' dispute sums agree with the disputes the aggregate lists.
    let disputed = |status: DisputeStatus| -> i64 {
        p.disputes.iter().filter(|d| d.status == status).map(|d| d.amount_minor).sum()
    };
    prop_assert_eq!(disputed(DisputeStatus::Open), p.figures.amount_disputed);
    prop_assert_eq!(disputed(DisputeStatus::Lost), p.figures.amount_dispute_lost);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn amounts_stay_within_bounds_and_fold_equals_step_by_step((amount, auto, tier, ops) in scenario()) {
        let context = test_context();
        let capture_method = if auto { CaptureMethod::Automatic } else { CaptureMethod::Manual };
        let mut initiate = initiate_with(usd(amount.min(tier.limits().max_single_payment_major * 100)), capture_method, merchant(tier, MerchantStatus::Active));
        initiate.customer.ip = None;
        let mut log: Vec<PaymentEvent> =
            PaymentAggregate::decide(&None, PaymentCommand::Initiate(Box::new(initiate)), &context).unwrap();
        let mut state = PaymentAggregate::fold(&log);
        let mut now = 10_i64;
        for (n, op) in ops.iter().enumerate() {
            now += if let Op::Expire(days) = op { days * DAY } else { 60 };
            let payment = state.clone().unwrap();
            let cmd = command(op, &payment, n as u128, now);
            if let Ok(events) = PaymentAggregate::decide(&state, cmd, &context) {
                prop_assert!(!events.is_empty());
                for event in &events {
                    state = PaymentAggregate::evolve(state, event);
                    check_bounds(state.as_ref().unwrap())?;
                }
                log.extend(events);
            }
            prop_assert_eq!(&PaymentAggregate::fold(&log), &state);
        }
        // Events survive a JSON round trip unchanged (they are what the log stores).
        let json = serde_json::to_string(&log).unwrap();
        let back: Vec<PaymentEvent> = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, log);
    }
}
