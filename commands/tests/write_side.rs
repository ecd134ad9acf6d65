//! The write side against a real embedded log: conflicts are retried by
//! deciding again on fresh state, idempotency keys give one effect, and the
//! create-payment script records the acquirer's answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{card, meta};
use paystream_commands::bus::CommandBus;
use paystream_commands::facts::{Facts, FactsBudget, DEFAULT_FACTS_CACHE_MIB};
use paystream_commands::services::{NewPayment, OnboardMerchant, Services};
use paystream_commands::{CommandError, SandboxAcquirer};
use paystream_domain::merchant::{FeeSchedule, Tier};
use paystream_domain::payment::{AcquirerOutcome, AmountInput, CaptureMethod, Customer, DeclineCode, PaymentStatus};
use paystream_domain::testing::test_context;
use paystream_domain::{Currency, Money};
use paystream_store::{EmbeddedStore, EventStore};
use uuid::Uuid;

struct World {
    services: Arc<Services>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with(Arc::new(SandboxAcquirer::default())).await
}

async fn world_with(acquirer: Arc<dyn paystream_commands::Acquirer>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&dir.path().join("log")).unwrap());
    let facts = Arc::new(Facts::temporary(FactsBudget::from_mib(DEFAULT_FACTS_CACHE_MIB)).unwrap());
    // Dropping the handle leaves the follower running until the store closes.
    let _ = facts.start(Arc::clone(&store));
    let bus = Arc::new(CommandBus::new(store, test_context()));
    World { services: Arc::new(Services::new(bus, facts, acquirer)), _dir: dir }
}

async fn merchant(services: &Services) -> paystream_domain::id::MerchantId {
    let onboard = OnboardMerchant {
        name: "Harbour Noodles".into(),
        country: "SG".parse().unwrap(),
        default_currency: Currency::SGD,
        settlement_currency: Currency::SGD,
        tier: Tier::B,
        fees: FeeSchedule { percent_bps: 250, fixed_minor: 20 },
    };
    services.onboard_merchant(&meta(), onboard).await.unwrap().state.unwrap().id
}

fn payment(merchant_id: paystream_domain::id::MerchantId, number: &str, capture: CaptureMethod) -> NewPayment {
    NewPayment {
        merchant_id,
        amount: Money::new(10_000, Currency::SGD),
        capture_method: capture,
        method: card(number),
        customer: Customer { ip: Some("203.0.113.9".parse().unwrap()), ..Default::default() },
        description: None,
        metadata: BTreeMap::new(),
    }
}

#[tokio::test]
async fn create_payment_records_the_acquirer_answer() {
    let w = world().await;
    let merchant_id = merchant(&w.services).await;
    let auto = w
        .services
        .create_payment(&meta(), payment(merchant_id, "4242424242424242", CaptureMethod::Automatic))
        .await
        .unwrap();
    let p = auto.state.unwrap();
    assert_eq!((p.status(), p.amount_captured, p.fees_charged), (PaymentStatus::Captured, 10_000, 270));
    assert_eq!(auto.events.len(), 4, "initiated, risk assessed, authorized, captured");

    let declined = w
        .services
        .create_payment(&meta(), payment(merchant_id, "4000000000009995", CaptureMethod::Manual))
        .await
        .unwrap();
    let p = declined.state.unwrap();
    assert_eq!((p.status(), p.decline_code.map(|c| c.as_str())), (PaymentStatus::Declined, Some("insufficient_funds")));

    let unavailable = w
        .services
        .create_payment(&meta(), payment(merchant_id, "4000000000000119", CaptureMethod::Manual))
        .await
        .unwrap();
    assert_eq!(unavailable.state.unwrap().decline_code.map(|c| c.as_str()), Some("acquirer_unavailable"));
}

#[tokio::test]
async fn concurrent_captures_retry_on_fresh_state_and_never_overcapture() {
    let w = world().await;
    let merchant_id = merchant(&w.services).await;
    let created = w
        .services
        .create_payment(&meta(), payment(merchant_id, "4242424242424242", CaptureMethod::Manual))
        .await
        .unwrap();
    let payment_id = created.state.unwrap().id;
    // 16 concurrent captures of 10.00 against a 100.00 authorization: ten win
    // (each deciding again after losing a race), six are refused by the rule.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let services = Arc::clone(&w.services);
        tasks.push(tokio::spawn(async move {
            services.capture(&meta(), payment_id, Some(AmountInput::minor(1_000)), false).await
        }));
    }
    let mut won = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(CommandError::Rejected(e)) => {
                assert!(matches!(e.code(), "payment_not_capturable" | "amount_exceeds_capturable"), "{e:?}");
                refused += 1;
            }
            Err(CommandError::Conflict { .. }) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let p = w.services.payment(payment_id).await.unwrap().unwrap();
    assert_eq!(p.amount_captured, 1_000 * won);
    assert!(p.amount_captured <= 10_000);
    assert_eq!(won + refused, 16);
    assert!(won >= 5, "retries on conflict should let most captures through, got {won}");
}

#[tokio::test]
async fn an_idempotency_key_gives_one_effect_and_replays_the_request() {
    let w = world().await;
    let merchant_id = merchant(&w.services).await;
    let mut first = meta();
    first.idempotency_key = Some("mer_x:order-1".into());
    first.request_fingerprint = Some("fp-1".into());
    let created = w
        .services
        .create_payment(&first, payment(merchant_id, "4242424242424242", CaptureMethod::Automatic))
        .await
        .unwrap();

    // Same key again (another request id): the store refuses a second effect.
    let mut again = meta();
    again.idempotency_key = first.idempotency_key.clone();
    again.request_fingerprint = first.request_fingerprint.clone();
    let error = w
        .services
        .create_payment(&again, payment(merchant_id, "4242424242424242", CaptureMethod::Automatic))
        .await
        .unwrap_err();
    assert!(matches!(error, CommandError::Store(paystream_store::StoreError::DuplicateIdempotencyKey { .. })));

    let bus = &w.services.bus;
    let replay = bus.find_replay("mer_x:order-1", &["fp-1"]).await.unwrap().unwrap();
    let replayed = bus.replay::<paystream_domain::payment::PaymentAggregate>(&replay).await.unwrap();
    assert_eq!(replayed.state, created.state);
    assert_eq!(replayed.position, created.position);
    assert_eq!(replayed.events, created.events);

    assert!(matches!(bus.find_replay("mer_x:order-1", &["fp-2"]).await, Err(CommandError::IdempotencyKeyReused)));
    assert!(bus.find_replay("mer_x:order-2", &["fp-1"]).await.unwrap().is_none());
}

#[tokio::test]
async fn facts_count_velocity_and_daily_volume() {
    let w = world().await;
    let merchant_id = merchant(&w.services).await;
    let mut last = 0;
    for _ in 0..3 {
        last = w
            .services
            .create_payment(&meta(), payment(merchant_id, "5555555555554444", CaptureMethod::Automatic))
            .await
            .unwrap()
            .position;
    }
    w.services.facts.wait_for(last).await;
    let now = paystream_commands::services::now();
    assert_eq!(
        w.services.facts.daily_volume(merchant_id, Currency::SGD, now).unwrap(),
        Money::new(30_000, Currency::SGD)
    );
    let instrument = card("5555555555554444").summarize(now, &test_context().fingerprint_key).unwrap().instrument_key();
    assert_eq!(
        w.services.facts.risk_signals(merchant_id, &instrument, None, now).unwrap().instrument_attempts_last_hour,
        3
    );
}

/// Only the first append of create_payment happens (as when the process dies
/// before the acquirer answers): the payment stays pending.
async fn initiate_only(w: &World, input: &NewPayment) -> paystream_domain::id::PaymentId {
    use paystream_domain::payment::{InitiatePayment, PaymentAggregate, PaymentCommand};
    let merchant = w.services.merchant(input.merchant_id).await.unwrap().unwrap();
    let payment_id = paystream_domain::id::PaymentId::from_uuid(Uuid::now_v7());
    let initiated = w
        .services
        .bus
        .execute::<PaymentAggregate>(payment_id.as_uuid(), &meta(), |_| {
            Ok(PaymentCommand::Initiate(Box::new(InitiatePayment {
                payment_id,
                merchant: merchant.clone(),
                amount: input.amount,
                capture_method: input.capture_method,
                method: input.method.clone(),
                customer: input.customer.clone(),
                description: None,
                metadata: BTreeMap::new(),
                daily_volume: Money::zero(Currency::SGD),
                signals: Default::default(),
                now: paystream_commands::services::now(),
            })))
        })
        .await
        .unwrap();
    assert_eq!(initiated.state.unwrap().status(), PaymentStatus::Pending);
    w.services.facts.wait_for(initiated.position).await;
    payment_id
}

#[tokio::test]
async fn a_payment_cut_off_before_the_acquirer_answer_can_be_finished() {
    let w = world().await;
    let merchant_id = merchant(&w.services).await;
    let input = payment(merchant_id, "4242424242424242", CaptureMethod::Automatic);
    let payment_id = initiate_only(&w, &input).await;
    let finished = w.services.authorize(&meta(), payment_id, input.amount, &input.method).await.unwrap();
    assert_eq!(finished.state.unwrap().status(), PaymentStatus::Captured);
    // Asking again is refused by the rules: the answer is recorded once.
    let again = w.services.authorize(&meta(), payment_id, input.amount, &input.method).await.unwrap_err();
    assert!(matches!(again, CommandError::Rejected(e) if e.code() == "payment_not_awaiting_authorization"));
}

/// An acquirer that remembers one authorization: `lookup` answers it.
struct Remembers {
    payment_id: std::sync::Mutex<Option<paystream_domain::id::PaymentId>>,
}

#[async_trait::async_trait]
impl paystream_commands::Acquirer for Remembers {
    async fn authorize(&self, _: paystream_commands::AuthorizationRequest<'_>) -> AcquirerOutcome {
        unreachable!("the sweep only looks up")
    }

    async fn lookup(&self, payment_id: paystream_domain::id::PaymentId) -> Option<AcquirerOutcome> {
        (*self.payment_id.lock().unwrap() == Some(payment_id))
            .then(|| AcquirerOutcome::Approved { acquirer_reference: "acq_remembered".into() })
    }
}

#[tokio::test]
async fn the_pending_sweep_records_what_the_acquirer_remembers_and_declines_what_it_does_not() {
    let acquirer = Arc::new(Remembers { payment_id: std::sync::Mutex::new(None) });
    let w = world_with(acquirer.clone()).await;
    let merchant_id = merchant(&w.services).await;
    let remembered = initiate_only(&w, &payment(merchant_id, "4242424242424242", CaptureMethod::Automatic)).await;
    let forgotten = initiate_only(&w, &payment(merchant_id, "5555555555554444", CaptureMethod::Manual)).await;
    *acquirer.payment_id.lock().unwrap() = Some(remembered);
    let now = paystream_commands::services::now();
    assert_eq!(w.services.facts.pending_since(now, 10), [remembered, forgotten]);

    let later = std::time::Duration::from_secs(3_600);
    assert_eq!(w.services.recover_pending(&meta(), later, 10).await.unwrap(), 0, "not pending long enough");
    let finished = w.services.recover_pending(&meta(), std::time::Duration::ZERO, 10).await.unwrap();
    assert_eq!(finished, 2);

    let p = w.services.payment(remembered).await.unwrap().unwrap();
    assert_eq!((p.status(), p.amount_captured), (PaymentStatus::Captured, 10_000), "authorized, captured at once");
    let p = w.services.payment(forgotten).await.unwrap().unwrap();
    assert_eq!((p.status(), p.decline_code), (PaymentStatus::Declined, Some(DeclineCode::AcquirerUnavailable)));
    let head = w.services.bus.store().head().await.unwrap();
    w.services.facts.wait_for(head).await;
    assert!(w.services.facts.pending_since(paystream_commands::services::now(), 10).is_empty());
    assert_eq!(w.services.recover_pending(&meta(), std::time::Duration::ZERO, 10).await.unwrap(), 0);
}
